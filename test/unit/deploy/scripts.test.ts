// The native-gateway install scripts. PowerShell is not installable here (not in Debian), so the
// Windows scripts are parsed with the tree-sitter PowerShell grammar (WASM) — any syntax error
// fails — and their key structure is checked: what they download and the checksum they verify,
// the firewall rule, the service definition. The systemd unit goes through `systemd-analyze
// verify` and `systemd-analyze security`; the Linux install script is run for real into a
// temporary root, and the configuration it writes is loaded by the gateway's own loader.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Language, type Node, Parser } from "web-tree-sitter";
import { loadConfig } from "../../../gateway/config.ts";
import { repoRoot } from "./compose-file.ts";

const require = createRequire(import.meta.url);
const win = (f: string) => path.join(repoRoot, "deploy/windows", f);
const linux = (f: string) => path.join(repoRoot, "deploy/linux", f);
const read = (p: string) => readFileSync(p, "utf8");

let parser: Parser;
beforeAll(async () => {
  await Parser.init();
  const wasm = path.join(
    path.dirname(require.resolve("tree-sitter-powershell/package.json")),
    "tree-sitter-powershell.wasm",
  );
  parser = new Parser();
  parser.setLanguage(await Language.load(wasm));
});

function syntaxErrors(source: string): string[] {
  const tree = parser.parse(source);
  if (!tree) throw new Error("parser returned no tree");
  const errors: string[] = [];
  const walk = (n: Node) => {
    if (n.type === "ERROR" || n.isMissing)
      errors.push(`${n.startPosition.row + 1}:${n.startPosition.column + 1}: ${n.text.slice(0, 60)}`);
    for (const c of n.children) if (c) walk(c);
  };
  walk(tree.rootNode);
  return errors;
}

/** Names declared in the script's own param() block (not its functions'). */
function paramNames(source: string): string[] {
  const tree = parser.parse(source);
  const block = tree?.rootNode.children.find((c) => c?.type === "param_block");
  if (!block) return [];
  const names: string[] = [];
  const walk = (n: Node) => {
    if (n.type === "script_parameter") {
      const v = n.children.find((c) => c?.type === "variable");
      if (v) names.push(v.text.replace(/^\$/, ""));
    }
    for (const c of n.children) if (c) walk(c);
  };
  walk(block);
  return names;
}

describe("Windows scripts", () => {
  it("the syntax check catches a broken script (the check itself works)", () => {
    expect(syntaxErrors('function F { if ($a -eq "x" { Write-Host "y" } }').length).toBeGreaterThan(0);
    expect(syntaxErrors('function F { if ($a -eq "x") { Write-Host "y" } }')).toEqual([]);
  });

  it.each(["install.ps1", "uninstall.ps1"])("%s parses without a syntax error", (file) => {
    expect(syntaxErrors(read(win(file)))).toEqual([]);
  });

  it("install.ps1 takes the parameters docs/deploy.md documents", () => {
    const params = paramNames(read(win("install.ps1")));
    for (const p of [
      "InstallDir",
      "ConfigDir",
      "MqttUrl",
      "MqttUsername",
      "GatewayId",
      "Interface",
      "Bbmd",
      "BacnetPort",
      "ServiceName",
      "WinSWPath",
      "SkipFirewall",
      "NoStart",
    ])
      expect(params).toContain(p);
    const docs = read(path.join(repoRoot, "docs/deploy.md"));
    for (const p of params) expect(docs, `docs/deploy.md mentions -${p}`).toContain(`-${p}`);
  });

  it("install.ps1 downloads WinSW only from its pinned release and refuses a file with another SHA-256", () => {
    const src = read(win("install.ps1"));
    const version = /\$WinSWVersion = '([\d.]+)'/.exec(src)?.[1];
    const sha = /\$WinSWSha256 = '([0-9A-F]{64})'/.exec(src)?.[1];
    expect(version).toBe("2.12.0");
    expect(sha).toMatch(/^[0-9A-F]{64}$/);
    expect(src).toContain(
      '$WinSWUrl = "https://github.com/winsw/winsw/releases/download/v$WinSWVersion/WinSW.NET461.exe"',
    );
    // Exactly one download, of that URL, announced, then hashed and compared.
    const downloads = [...src.matchAll(/Invoke-WebRequest[^\n]*/g)].map((m) => m[0]);
    expect(downloads).toEqual(["Invoke-WebRequest -UseBasicParsing -Uri $WinSWUrl -OutFile $partial"]);
    expect(src).toMatch(/Write-Host "\s*Downloading WinSW \$WinSWVersion from \$WinSWUrl"/);
    expect(src).toMatch(/Get-FileHash -LiteralPath \$Destination -Algorithm SHA256/);
    expect(src).toMatch(/if \(\$actual -ne \$WinSWSha256\) \{\s*Remove-Item[^\n]*\n\s*throw/);
    // The docs name the same version and checksum.
    const docs = read(path.join(repoRoot, "docs/deploy.md"));
    expect(docs).toContain(`WinSW ${version}`);
    expect(docs).toContain(sha as string);
  });

  it("install.ps1 checks Node, opens UDP 47808 for node.exe and installs a least-privilege service", () => {
    const src = read(win("install.ps1"));
    expect(src).toMatch(/\$MinNodeMajor = 20/);
    expect(src).toMatch(/\[int\]\$BacnetPort = 47808/);
    expect(src).toMatch(
      /New-NetFirewallRule[^\n]*`\n[^\n]*`\n\s*-Direction Inbound -Protocol UDP -LocalPort \$BacnetPort -Program \$NodeExe/,
    );
    expect(src).toContain("-Profile @('Domain', 'Private')");
    expect(src).toContain("StartName = 'NT AUTHORITY\\LocalService'");
    expect(src).toContain("& npm.cmd ci '--omit=dev'");
    // The WinSW service definition: node running `bacmqtt gateway --config …`, restart on failure.
    expect(src).toMatch(
      /<arguments>--max-old-space-size=256 "\$entry" gateway --config "\$config"<\/arguments>/,
    );
    expect(src).toMatch(/<onfailure action="restart"/);
    expect(src).toMatch(/<stoptimeout>30 sec<\/stoptimeout>/);
  });

  it("uninstall.ps1 removes the service, the firewall rule and the program, and keeps data unless asked", () => {
    const src = read(win("uninstall.ps1"));
    expect(paramNames(src)).toEqual(["InstallDir", "ConfigDir", "BacnetPort", "ServiceName", "RemoveData"]);
    expect(src).toContain("& $serviceExe uninstall");
    expect(src).toContain('Get-NetFirewallRule -Name "bacmqtt-bacnet-udp-$BacnetPort"');
    expect(read(win("install.ps1"))).toContain('$FirewallRuleName = "bacmqtt-bacnet-udp-$BacnetPort"');
    expect(src).toMatch(/if \(\$RemoveData\)/);
  });

  it("bacmqtt-gateway.cmd runs the gateway (or doctor) with the service's config, with CRLF line ends", () => {
    const src = read(win("bacmqtt-gateway.cmd"));
    expect(src.split("\n").every((l, i, all) => i === all.length - 1 || l.endsWith("\r"))).toBe(true);
    expect(src).toContain('set "BACMQTT_CONFIG=%ProgramData%\\bacmqtt\\gateway.yaml"');
    expect(src).toContain(
      'node --max-old-space-size=256 "%BACMQTT_ROOT%\\bin\\bacmqtt.mjs" %COMMAND% --config "%BACMQTT_CONFIG%" %ARGS%',
    );
    // Every label jumped to exists.
    const labels = new Set([...src.matchAll(/^:(\w+)/gm)].map((m) => m[1]));
    for (const m of src.matchAll(/goto (\w+)/g))
      expect(labels.has(m[1] as string), `label ${m[1]}`).toBe(true);
    // --config is an option of both commands it can run.
    expect(existsSync(path.join(repoRoot, "bin/bacmqtt.mjs"))).toBe(true);
  });
});

const analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].find((p) => existsSync(p));

describe.skipIf(!analyze)("systemd unit (systemd-analyze)", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-unit-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** The unit as install.sh writes it for this machine's node (verify needs an existing binary). */
  function unitFor(text: string): string {
    const file = path.join(dir, "bacmqtt-gateway.service");
    writeFileSync(file, text.replace("ExecStart=/usr/bin/node ", `ExecStart=${process.execPath} `));
    return file;
  }

  it("passes systemd-analyze verify without a warning", () => {
    const r = spawnSync(analyze as string, ["verify", unitFor(read(linux("bacmqtt-gateway.service")))], {
      encoding: "utf8",
    });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  it("verify would catch a mistake (the check itself works)", () => {
    const bad = read(linux("bacmqtt-gateway.service")).replace(
      "Restart=on-failure",
      "Restart=on-failure\nRestartt=always",
    );
    const r = spawnSync(analyze as string, ["verify", unitFor(bad)], { encoding: "utf8" });
    expect(r.stderr).toMatch(/Unknown key .?Restartt/);
  });

  it("is hardened: dynamic user, no capabilities, restart on failure, exposure at most 2.0", () => {
    const unit = read(linux("bacmqtt-gateway.service"));
    for (const line of [
      "DynamicUser=yes",
      "CapabilityBoundingSet=",
      "AmbientCapabilities=",
      "NoNewPrivileges=yes",
      "ProtectSystem=strict",
      "Restart=on-failure",
      "StateDirectory=bacmqtt",
    ])
      expect(unit.split("\n")).toContain(line);
    const r = spawnSync(analyze as string, ["security", "--offline=true", "--no-pager", unitFor(unit)], {
      encoding: "utf8",
    });
    const exposure = /Overall exposure level for [^:]+: ([\d.]+)/.exec(`${r.stdout}${r.stderr}`)?.[1];
    expect(exposure, r.stdout + r.stderr).toBeDefined();
    expect(Number(exposure)).toBeLessThanOrEqual(2.0);
  });

  it("runs the gateway with the configuration passed as a credential and state in StateDirectory", () => {
    const unit = read(linux("bacmqtt-gateway.service"));
    expect(unit).toContain("LoadCredential=gateway.yaml:/etc/bacmqtt/gateway.yaml");
    expect(unit).toMatch(
      /^ExecStart=\/usr\/bin\/node --max-old-space-size=256 \/opt\/bacmqtt\/bin\/bacmqtt\.mjs gateway --config %d\/gateway\.yaml --data-dir \/var\/lib\/bacmqtt$/m,
    );
  });
});

describe("deploy/linux/install.sh", () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-install-"));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const run = (...args: string[]) =>
    execFileSync("sh", [linux("install.sh"), "--skip-npm", "--no-systemctl", ...args], {
      encoding: "utf8",
      env: {
        PATH: process.env.PATH,
        PREFIX: path.join(root, "opt"),
        ETC_DIR: path.join(root, "etc"),
        UNIT_DIR: path.join(root, "units"),
      },
    });

  it("installs the application, a root-only config the gateway loads, and the unit for this node", () => {
    const out = run(
      "--mqtt-url",
      "mqtt://192.0.2.20:1883",
      "--gateway-id",
      "site-a",
      "--interface",
      "eth0",
      "--bbmd",
      "192.0.2.1:47808",
    );
    expect(out).toContain("wrote");
    expect(existsSync(path.join(root, "opt/bin/bacmqtt.mjs"))).toBe(true);
    expect(existsSync(path.join(root, "opt/test"))).toBe(false);
    expect(existsSync(path.join(root, "opt/node_modules"))).toBe(false);
    const config = path.join(root, "etc/gateway.yaml");
    expect(statSync(config).mode & 0o777).toBe(0o600);
    const cfg = loadConfig({ file: config, env: {} });
    expect(cfg.gateway_id).toBe("site-a");
    expect(cfg.mqtt.url).toBe("mqtt://192.0.2.20:1883");
    expect(cfg.bacnet.interface).toBe("eth0");
    expect(cfg.bacnet.bbmd).toBe("192.0.2.1:47808");
    const unit = read(path.join(root, "units/bacmqtt-gateway.service"));
    expect(unit).toContain(
      `ExecStart=${execFileSync("sh", ["-c", "command -v node"], { encoding: "utf8" }).trim()} --max-old-space-size=256 ${root}/opt/bin/bacmqtt.mjs gateway`,
    );
    expect(unit).toContain(`LoadCredential=gateway.yaml:${config}`);
  });

  it("keeps an existing configuration on re-install", () => {
    const config = path.join(root, "etc/gateway.yaml");
    writeFileSync(config, "gateway_id: edited\n");
    expect(run("--mqtt-url", "mqtt://192.0.2.30:1883")).toContain("keeping the existing");
    expect(read(config)).toBe("gateway_id: edited\n");
  });

  it("rejects an unknown option", () => {
    const r = spawnSync("sh", [linux("install.sh"), "--frobnicate"], { encoding: "utf8" });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown option --frobnicate");
  });
});
