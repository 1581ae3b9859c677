// bacmqtt web console: plain ES module, no framework, no build step. Views are rebuilt from the
// REST API on navigation; live values, availability and discovery progress arrive over the
// /api/events stream (read with fetch so the API key travels in a header, never in a URL).
// All text from the API goes through textContent (the h() helper), never innerHTML.

const state = {
  key: localStorage.getItem("bacmqtt.key") || "",
  /** point name → cell updaters for the device page shown now. */
  live: null,
  discovery: new Map(),
  listeners: new Set(),
};

// ---- helpers ---------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el =
    tag === "svg" || attrs.svg
      ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false || k === "svg") continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat())
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const s = (tag, attrs = {}, ...children) => h(tag, { ...attrs, svg: true }, ...children);
const $ = (sel) => document.querySelector(sel);

function fmtTime(t) {
  if (!t) return "—";
  const d = new Date(t);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}
function fmtAgo(t) {
  if (!t) return "never";
  const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function fmtValue(point, value, text) {
  if (value === null || value === undefined) return text ?? "—";
  if (typeof value === "boolean")
    return value ? point?.active_text || "active" : point?.inactive_text || "inactive";
  if (typeof value === "number") {
    if (point?.object_type?.startsWith("binary"))
      return value ? point.active_text || "active" : point.inactive_text || "inactive";
    if (point?.state_texts && Number.isInteger(value) && point.state_texts[value - 1])
      return point.state_texts[value - 1];
    return Number.isInteger(value) ? String(value) : value.toFixed(Math.abs(value) < 10 ? 2 : 1);
  }
  return String(value);
}
function unitsText(u) {
  const map = {
    "degrees-celsius": "°C",
    "degrees-fahrenheit": "°F",
    percent: "%",
    "percent-relative-humidity": "%RH",
    pascals: "Pa",
    kilowatts: "kW",
    "kilowatt-hours": "kWh",
    "parts-per-million": "ppm",
    "liters-per-second": "l/s",
    "cubic-meters-per-hour": "m³/h",
  };
  return u ? map[u] || u : "";
}

function toast(message, bad = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}

class HttpError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.body ? { "content-type": "application/json" } : {}) };
  if (state.key) headers.authorization = `Bearer ${state.key}`;
  const res = await fetch(path, {
    ...options,
    headers,
    body: options.body ? JSON.stringify(options.body) : undefined,
  });
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401 && !options.quiet) openKeyDialog();
    throw new HttpError(res.status, body);
  }
  return body;
}

// ---- live events -----------------------------------------------------------------------------

let liveAbort = null;
async function connectLive() {
  liveAbort?.abort();
  const ctrl = new AbortController();
  liveAbort = ctrl;
  const indicator = $("#live");
  for (let attempt = 0; !ctrl.signal.aborted; attempt++) {
    try {
      const res = await fetch("/api/events", {
        headers: state.key ? { authorization: `Bearer ${state.key}` } : {},
        signal: ctrl.signal,
      });
      if (!res.ok) throw new HttpError(res.status, await res.json().catch(() => null));
      indicator.textContent = "live";
      indicator.classList.add("on");
      attempt = 0;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        for (let at = buffer.indexOf("\n\n"); at >= 0; at = buffer.indexOf("\n\n")) {
          const chunk = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          let event = "message";
          let data = "";
          for (const line of chunk.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) dispatchLive(event, JSON.parse(data));
        }
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
      if (err instanceof HttpError && err.status === 401) {
        indicator.textContent = "no key";
        indicator.classList.remove("on");
        return;
      }
    }
    indicator.textContent = "reconnecting";
    indicator.classList.remove("on");
    await new Promise((r) => setTimeout(r, Math.min(1000 * 2 ** attempt, 15000)));
  }
}

function dispatchLive(event, msg) {
  for (const fn of state.listeners) fn(event, msg);
}
function onLive(fn) {
  state.listeners.add(fn);
  return () => state.listeners.delete(fn);
}

// ---- inventory -------------------------------------------------------------------------------

async function inventoryView(view, params) {
  const query = {
    q: params.get("q") || "",
    status: params.get("status") || "",
  };
  const limit = 50;
  const gwBox = h("div", { class: "gateways" });
  const search = h("input", {
    type: "search",
    placeholder: "Search name, location, vendor, instance…",
    value: query.q,
    "aria-label": "Search devices",
  });
  const status = h(
    "select",
    { "aria-label": "Status" },
    h("option", { value: "" }, "All devices"),
    h("option", { value: "online" }, "Online"),
    h("option", { value: "offline" }, "Offline"),
  );
  status.value = query.status;
  const tbody = h("tbody");
  const pager = h("div", { class: "pager" });
  const table = h(
    "table",
    { id: "devices" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "Device"),
        h("th", { class: "num" }, "Instance"),
        h("th", {}, "Gateway"),
        h("th", {}, "Vendor / model"),
        h("th", {}, "Location"),
        h("th", {}, "Address"),
        h("th", { class: "num" }, "Points"),
        h("th", {}, "Status"),
        h("th", {}, "Last seen"),
      ),
    ),
    tbody,
  );
  view.replaceChildren(
    h("div", { class: "title-row" }, h("h1", {}, "Inventory")),
    gwBox,
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-head" },
        h("h2", {}, "Devices"),
        h("div", { class: "spacer" }),
        h("div", { class: "toolbar" }, search, status),
      ),
      table,
      pager,
    ),
  );

  // Paging by the api's cursor: `cursors[i]` opens page i (null: the first page, which also brings
  // the total). Kept in memory; the address holds only the search, so a reload starts at page 1.
  let cursors = [null];
  let pageIndex = 0;
  let total = 0;
  const go = () => {
    const p = new URLSearchParams({ q: search.value, status: status.value });
    for (const [k, v] of [...p]) if (!v) p.delete(k);
    const target = `#/${p.toString() ? `?${p}` : ""}`;
    if (location.hash !== target) history.replaceState(null, "", target);
    cursors = [null];
    void loadDevices(0);
  };
  let debounce;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => go(), 200);
  });
  status.addEventListener("change", () => go());

  async function loadDevices(index) {
    const p = new URLSearchParams({ limit: String(limit) });
    if (cursors[index]) p.set("cursor", cursors[index]);
    if (search.value) p.set("q", search.value);
    if (status.value) p.set("status", status.value);
    let page;
    try {
      page = await api(`/api/devices?${p}`);
    } catch (err) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "empty-state" }, err.message)));
      return;
    }
    pageIndex = index;
    if (page.total !== null) total = page.total;
    cursors.length = index + 1;
    if (page.next_cursor) cursors.push(page.next_cursor);
    tbody.replaceChildren(
      ...page.items.map((d) => {
        const href = `#/device/${encodeURIComponent(d.gateway_id)}/${d.device_instance}`;
        return h(
          "tr",
          { "data-device": d.device_instance },
          h(
            "td",
            {},
            h("a", { href }, d.object_name || `Device ${d.device_instance}`),
            d.description ? h("div", { class: "muted" }, d.description) : null,
          ),
          h("td", { class: "num" }, d.device_instance),
          h("td", {}, d.gateway_id),
          h("td", {}, [d.vendor_name, d.model_name].filter(Boolean).join(" · ") || "—"),
          h("td", {}, d.location || "—"),
          h("td", { class: "nowrap" }, d.address || "—"),
          h("td", { class: "num" }, d.points),
          h("td", {}, statusBadge(d.online)),
          h("td", { class: "nowrap muted", title: fmtTime(d.last_seen) }, fmtAgo(d.last_seen)),
        );
      }),
    );
    if (page.items.length === 0)
      tbody.replaceChildren(
        h(
          "tr",
          {},
          h(
            "td",
            { colspan: 9, class: "empty-state" },
            search.value || status.value
              ? "No device matches."
              : "No devices yet. Start a discovery on a gateway above.",
          ),
        ),
      );
    const offset = index * limit;
    const from = page.items.length ? offset + 1 : 0;
    pager.replaceChildren(
      h(
        "span",
        {},
        `${from}–${offset + page.items.length} of ${Math.max(total, offset + page.items.length)}`,
      ),
      h("button", { disabled: index === 0, onclick: () => void loadDevices(index - 1) }, "‹ Previous"),
      h("button", { disabled: !page.next_cursor, onclick: () => void loadDevices(index + 1) }, "Next ›"),
    );
  }

  async function loadGateways() {
    let gws;
    try {
      gws = (await api("/api/gateways")).items;
    } catch (err) {
      gwBox.replaceChildren(h("div", { class: "panel muted" }, err.message));
      return;
    }
    if (gws.length === 0)
      gwBox.replaceChildren(h("div", { class: "panel muted" }, "No gateway has connected yet."));
    else gwBox.replaceChildren(...gws.map(gatewayCard));
  }

  await Promise.all([loadGateways(), loadDevices(0)]);
  return onLive((event, msg) => {
    if (event === "gateway") void loadGateways();
    if (event === "availability") {
      const row = tbody.querySelector(`tr[data-device="${msg.device}"]`);
      if (row) row.children[7].replaceChildren(statusBadge(msg.data.state === "online"));
    }
    if (event === "discovery" && msg.data.type === "scan_finished") {
      void loadDevices(pageIndex);
    }
  });
}

function statusBadge(online) {
  if (online === null || online === undefined) return h("span", { class: "badge" }, "unknown");
  return h("span", { class: `badge ${online ? "ok" : "bad"}` }, online ? "online" : "offline");
}

function gatewayCard(g) {
  const bar = h("div");
  const statusLine = h(
    "div",
    { class: "status" },
    `${g.devices} devices · ${g.devices_online} online · seen ${fmtAgo(g.last_seen)}`,
  );
  const button = h("button", { class: "primary small", "data-discover": g.gateway_id }, "Start discovery");
  const options = discoveryOptions();
  const card = h(
    "div",
    { class: "gw", "data-gateway": g.gateway_id },
    h(
      "div",
      { class: "gw-head" },
      h("strong", {}, g.gateway_id),
      h("span", { class: `badge ${g.state === "online" ? "ok" : "bad"}` }, g.state || "unknown"),
      h("div", { class: "spacer" }),
      button,
    ),
    h("div", { class: "progress", hidden: true }, bar),
    statusLine,
    options.box,
  );
  const progress = card.querySelector(".progress");
  const stop = onLive((event, msg) => {
    if (!card.isConnected) return stop();
    if (event !== "discovery" || msg.gateway !== g.gateway_id) return;
    const d = msg.data.data || {};
    progress.hidden = false;
    if (msg.data.type === "scan_started") {
      bar.style.width = "3%";
      statusLine.textContent = "Discovery started…";
    }
    if (msg.data.type === "scan_progress") {
      const pct = d.total ? Math.round((100 * (d.sent ?? 0)) / d.total) : 50;
      bar.style.width = `${Math.max(5, Math.min(95, pct))}%`;
      statusLine.textContent = `Discovering… ${d.phase ? `${d.phase}, ` : ""}${d.found ?? 0} found`;
    }
    if (msg.data.type === "device_discovered")
      statusLine.textContent = `Found device ${d.device ?? d.device_instance ?? ""}`;
    if (msg.data.type === "scan_finished") {
      bar.style.width = "100%";
      statusLine.textContent = `Discovery finished: ${d.devices_found ?? d.found ?? "?"} devices`;
    }
  });
  button.addEventListener("click", async () => {
    button.disabled = true;
    progress.hidden = false;
    bar.style.width = "3%";
    statusLine.textContent = "Discovery requested…";
    try {
      const r = await api(`/api/gateways/${encodeURIComponent(g.gateway_id)}/discover`, {
        method: "POST",
        body: options.body(),
      });
      bar.style.width = "100%";
      const n = r.data.new_devices?.length ?? 0;
      statusLine.textContent = `Discovery finished: ${r.data.devices_found} devices, ${n} new (${Math.round(r.data.duration_ms)} ms)`;
      toast(`Discovery on ${g.gateway_id}: ${r.data.devices_found} devices found`);
      setTimeout(() => route(), 1200);
    } catch (err) {
      statusLine.textContent = `Discovery failed: ${err.message}`;
      toast(err.message, true);
    } finally {
      button.disabled = false;
    }
  });
  return card;
}

/** The discovery's optional settings: instance range, unicast targets (where broadcast cannot reach), timeout. */
function discoveryOptions() {
  const low = h("input", {
    type: "number",
    min: 0,
    max: 4194303,
    placeholder: "0",
    name: "low",
    "aria-label": "Lowest instance",
  });
  const high = h("input", {
    type: "number",
    min: 0,
    max: 4194303,
    placeholder: "4194303",
    name: "high",
    "aria-label": "Highest instance",
  });
  const targets = h("input", {
    type: "text",
    placeholder: "192.168.1.20, 10.0.0.5:47808",
    name: "targets",
    "aria-label": "Unicast targets",
  });
  const timeout = h("input", {
    type: "number",
    min: 1,
    max: 600,
    placeholder: "gateway default",
    name: "timeout_s",
    "aria-label": "Listen time in seconds",
  });
  const box = h(
    "details",
    { class: "discover-options" },
    h("summary", {}, "Discovery options"),
    h(
      "div",
      { class: "option-grid" },
      h("label", {}, "Instances from", low),
      h("label", {}, "to", high),
      h("label", { class: "wide" }, "Unicast targets (ip[:port], comma-separated)", targets),
      h("label", {}, "Listen (s)", timeout),
    ),
  );
  return {
    box,
    body() {
      const body = { points: true };
      if (low.value !== "") body.low = Number(low.value);
      if (high.value !== "") body.high = Number(high.value);
      if (timeout.value !== "") body.timeout_s = Number(timeout.value);
      const list = targets.value
        .split(",")
        .map((t) => t.trim())
        .filter(Boolean);
      if (list.length) body.targets = list;
      return body;
    },
  };
}

// ---- device page -----------------------------------------------------------------------------

async function deviceView(view, gateway, device) {
  const d = await api(`/api/gateways/${encodeURIComponent(gateway)}/devices/${device}`);
  const cells = new Map();
  const chartBox = h("section", { class: "panel", id: "chart-panel", hidden: true });
  const statusCell = h("span", {}, statusBadge(d.online));
  const refresh = h("button", {}, "Re-read points");
  refresh.addEventListener("click", async () => {
    refresh.disabled = true;
    try {
      const r = await api(`/api/gateways/${encodeURIComponent(gateway)}/devices/${device}/refresh`, {
        method: "POST",
        body: {},
      });
      toast(`Read ${r.data.points} points in ${Math.round(r.data.duration_ms)} ms`);
      setTimeout(() => route(), 800);
    } catch (err) {
      toast(err.message, true);
    } finally {
      refresh.disabled = false;
    }
  });
  const rows = d.points.map((p) => {
    const value = h("td", { class: "value" }, fmtValue(p, p.latest?.value, p.latest?.value_text));
    const time = h(
      "td",
      { class: "nowrap muted", title: fmtTime(p.latest?.time) },
      p.latest ? fmtAgo(p.latest.time) : "—",
    );
    const quality = h("td", {}, qualityBadge(p.latest?.quality));
    const tr = h(
      "tr",
      { "data-point": p.point },
      h("td", {}, h("div", {}, p.name || p.point), h("div", { class: "muted" }, p.point)),
      value,
      h("td", {}, unitsText(p.units)),
      quality,
      time,
      h(
        "td",
        { class: "actions" },
        h("button", { class: "small", onclick: () => showChart(chartBox, p, tr) }, "Chart"),
        h("button", { class: "small", onclick: () => readNow(gateway, device, p) }, "Read"),
        p.writable
          ? h(
              "button",
              { class: "small", "data-write": p.point, onclick: () => openWrite(gateway, device, d, p) },
              "Write…",
            )
          : null,
      ),
    );
    cells.set(p.point, { p, value, time, quality, tr });
    return tr;
  });
  const props = [
    ["Instance", d.device_instance],
    ["Gateway", d.gateway_id],
    ["Address", d.address],
    ["Network / MAC", d.network ? `${d.network} / ${d.mac}` : "local"],
    ["Vendor", d.vendor_name ? `${d.vendor_name} (${d.vendor_id})` : d.vendor_id],
    ["Model", d.model_name],
    ["Firmware", d.firmware_revision],
    ["Application", d.application_software_version],
    ["Location", d.location],
    ["Segmentation", d.segmentation],
    ["Max APDU", d.max_apdu],
    ["Last seen", fmtTime(d.last_seen)],
  ];
  view.replaceChildren(
    h(
      "div",
      { class: "crumbs" },
      h("a", { href: "#/" }, "Inventory"),
      ` / ${d.gateway_id} / ${d.device_instance}`,
    ),
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, d.object_name || `Device ${d.device_instance}`),
      statusCell,
      h("div", { class: "spacer" }),
      refresh,
    ),
    h(
      "section",
      { class: "panel" },
      d.description ? h("p", { class: "muted", style: "margin-top:0" }, d.description) : null,
      h(
        "dl",
        { class: "props" },
        ...props.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", { title: v ?? "" }, v ?? "—"))),
      ),
    ),
    chartBox,
    h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, `Points (${d.points.length})`)),
      d.points.length
        ? h(
            "table",
            { id: "points" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                h("th", {}, "Point"),
                h("th", {}, "Value"),
                h("th", {}, "Units"),
                h("th", {}, "Quality"),
                h("th", {}, "Updated"),
                h("th", {}, ""),
              ),
            ),
            h("tbody", {}, rows),
          )
        : h("div", { class: "empty-state" }, "No points known yet. Use “Re-read points”."),
    ),
  );

  const tick = setInterval(() => {
    for (const c of cells.values()) if (c.p.latest) c.time.textContent = fmtAgo(c.p.latest.time);
  }, 5000);
  const stop = onLive((event, msg) => {
    if (msg.gateway !== gateway || msg.device !== device) return;
    if (event === "availability") statusCell.replaceChildren(statusBadge(msg.data.state === "online"));
    if (event === "reading") {
      for (const r of msg.data.readings) {
        const c = cells.get(r.point);
        if (!c) continue;
        c.p.latest = {
          time: r.ts,
          value: typeof r.value === "boolean" ? Number(r.value) : r.value,
          quality: r.quality ?? null,
        };
        c.value.textContent = fmtValue(c.p, r.value, typeof r.value === "string" ? r.value : null);
        c.time.textContent = fmtAgo(r.ts);
        c.time.title = fmtTime(r.ts);
        c.quality.replaceChildren(qualityBadge(r.quality));
        c.value.classList.remove("flash");
        void c.value.offsetWidth;
        c.value.classList.add("flash");
      }
    }
  });
  return () => {
    clearInterval(tick);
    stop();
  };
}

function qualityBadge(q) {
  if (!q) return h("span", { class: "muted" }, "—");
  return h("span", { class: `badge ${q === "good" ? "ok" : q === "bad" ? "bad" : "warn"}` }, q);
}

async function readNow(gateway, device, p) {
  try {
    const r = await api(
      `/api/gateways/${encodeURIComponent(gateway)}/devices/${device}/points/${p.point}/read`,
      { method: "POST", body: {} },
    );
    toast(`${p.name || p.point}: ${fmtValue(p, r.data.value)} ${unitsText(p.units)}`);
  } catch (err) {
    toast(err.message, true);
  }
}

// ---- chart -----------------------------------------------------------------------------------

const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3, "1y": 365 * 86400e3 };

function showChart(box, p, tr) {
  for (const sel of document.querySelectorAll("#points tr.selected")) sel.classList.remove("selected");
  tr.classList.add("selected");
  box.hidden = false;
  let range = "24h";
  let resolution = "auto";
  const svgBox = h("div");
  const meta = h("div", { class: "chart-meta" });
  const seg = (opts, current, set) => {
    const el = h("div", { class: "seg" });
    const draw = () =>
      el.replaceChildren(
        ...opts.map((o) =>
          h(
            "button",
            {
              class: o === current() ? "on" : "",
              "data-option": o,
              onclick: () => {
                set(o);
                draw();
                void load();
              },
            },
            o,
          ),
        ),
      );
    draw();
    return el;
  };
  box.replaceChildren(
    h(
      "div",
      { class: "panel-head" },
      h("h2", {}, `${p.name || p.point}`),
      h("span", { class: "muted" }, unitsText(p.units)),
      h("div", { class: "spacer" }),
      seg(
        Object.keys(RANGES),
        () => range,
        (v) => (range = v),
      ),
      h(
        "span",
        { id: "resolution-seg" },
        seg(
          ["auto", "raw", "hourly", "daily"],
          () => resolution,
          (v) => (resolution = v),
        ),
      ),
      h(
        "button",
        {
          class: "ghost small",
          onclick: () => {
            box.hidden = true;
            tr.classList.remove("selected");
          },
        },
        "✕",
      ),
    ),
    svgBox,
    meta,
  );
  box.scrollIntoView({ behavior: "smooth", block: "nearest" });
  async function load() {
    const to = new Date();
    const from = new Date(to.getTime() - RANGES[range]);
    try {
      const r = await api(
        `/api/points/${p.point_id}/history?from=${from.toISOString()}&to=${to.toISOString()}&resolution=${resolution}&limit=5000`,
      );
      const series = r.series[0];
      svgBox.replaceChildren(chart(series.rows, r.resolution, from, to));
      meta.textContent = `${series.rows.length} ${r.resolution} ${r.resolution === "raw" ? "readings" : "buckets"}${series.truncated ? " (truncated)" : ""} · ${from.toLocaleString()} – ${to.toLocaleString()}`;
    } catch (err) {
      meta.textContent = err.message;
    }
  }
  void load();
  // New readings of this point redraw the chart (at most every 3 s) while it is the one shown.
  const token = Symbol(p.point);
  box.dataset.token = String(p.point_id);
  showChart.current = token;
  let last = 0;
  const stop = onLive((event, msg) => {
    if (showChart.current !== token || !box.isConnected) return stop();
    if (box.hidden || event !== "reading" || msg.gateway !== p.gateway_id || msg.device !== p.device_instance)
      return;
    if (!msg.data.readings.some((r) => r.point === p.point) || Date.now() - last < 3000) return;
    last = Date.now();
    void load();
  });
}

function chart(rows, resolution, from, to) {
  const W = 1000,
    H = 280,
    L = 56,
    R = 12,
    T = 12,
    B = 28;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${W} ${H}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": "history chart",
  });
  const pts = rows.filter((r) => typeof r.value === "number");
  if (pts.length === 0) {
    svg.append(
      s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No data in this range"),
    );
    return svg;
  }
  let lo = Math.min(...pts.map((r) => r.min ?? r.value));
  let hi = Math.max(...pts.map((r) => r.max ?? r.value));
  if (lo === hi) {
    lo -= 1;
    hi += 1;
  }
  const pad = (hi - lo) * 0.08;
  lo -= pad;
  hi += pad;
  // A point younger than the range starts the axis at its first value instead of leaving it empty.
  const t0 = Math.max(from.getTime(), new Date(pts[0].time).getTime() - (resolution === "raw" ? 0 : 3600e3)),
    t1 = to.getTime();
  const x = (t) => L + ((new Date(t).getTime() - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const grid = s("g", { class: "grid" });
  const axis = s("g", { class: "axis" });
  const step = (hi - lo) / 4;
  const decimals = step >= 10 ? 0 : step >= 1 ? 1 : step >= 0.1 ? 2 : 3;
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    grid.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    axis.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(decimals)));
  }
  for (let i = 0; i <= 5; i++) {
    const t = t0 + ((t1 - t0) * i) / 5;
    const d = new Date(t);
    const label =
      t1 - t0 > 2 * 86400e3
        ? d.toLocaleDateString(undefined, { month: "short", day: "numeric" })
        : d.toLocaleTimeString(undefined, {
            hour: "2-digit",
            minute: "2-digit",
            ...(t1 - t0 < 600e3 ? { second: "2-digit" } : {}),
          });
    axis.append(
      s("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 5 ? "end" : "middle" }, label),
    );
  }
  svg.append(grid, axis);
  if (resolution !== "raw") {
    const top = pts.map((r) => `${x(r.time).toFixed(1)},${y(r.max ?? r.value).toFixed(1)}`);
    const bottom = pts
      .slice()
      .reverse()
      .map((r) => `${x(r.time).toFixed(1)},${y(r.min ?? r.value).toFixed(1)}`);
    svg.append(s("polygon", { class: "band", points: [...top, ...bottom].join(" ") }));
  }
  svg.append(
    s("polyline", {
      class: "line",
      points: pts.map((r) => `${x(r.time).toFixed(1)},${y(r.value).toFixed(1)}`).join(" "),
    }),
  );
  return svg;
}

// ---- write dialog ----------------------------------------------------------------------------

function openWrite(gateway, device, d, p) {
  const dlg = $("#write-dialog");
  const slot = $("#write-value-slot");
  const prio = $("#write-priority");
  const confirmBox = $("#write-confirm");
  const result = $("#write-result");
  const submit = $("#write-submit");
  const relinquish = $("#write-relinquish");
  $("#write-title").textContent = `Write ${p.name || p.point}`;
  $("#write-subtitle").textContent =
    `${d.object_name || `Device ${device}`} · ${p.point} · now ${fmtValue(p, p.latest?.value, p.latest?.value_text)} ${unitsText(p.units)}`;
  let input;
  if (p.object_type?.startsWith("binary")) {
    input = h(
      "select",
      { id: "write-value", name: "value" },
      h("option", { value: "1" }, p.active_text || "active"),
      h("option", { value: "0" }, p.inactive_text || "inactive"),
    );
  } else if (p.state_texts?.length) {
    input = h(
      "select",
      { id: "write-value", name: "value" },
      ...p.state_texts.map((t, i) => h("option", { value: String(i + 1) }, t)),
    );
  } else {
    input = h("input", {
      id: "write-value",
      name: "value",
      type: "number",
      step: "any",
      required: true,
      value: p.latest?.value ?? "",
    });
  }
  slot.replaceChildren(input);
  prio.replaceChildren(
    ...Array.from({ length: 16 }, (_, i) =>
      h(
        "option",
        { value: String(i + 1) },
        `${i + 1}${i + 1 === 8 ? " (manual operator)" : i + 1 === 16 ? " (lowest)" : ""}`,
      ),
    ),
  );
  prio.value = "8";
  confirmBox.hidden = true;
  result.hidden = true;
  let pending = null;
  const reset = () => {
    pending = null;
    confirmBox.hidden = true;
    submit.textContent = "Write…";
    relinquish.textContent = "Relinquish…";
    submit.disabled = relinquish.disabled = false;
  };
  reset();
  input.addEventListener("input", reset);
  prio.onchange = reset;
  const value = () => {
    if (input.tagName === "SELECT")
      return p.object_type?.startsWith("binary") ? input.value === "1" : Number(input.value);
    return input.value === "" ? NaN : Number(input.value);
  };
  async function run(kind) {
    if (pending !== kind) {
      const v = value();
      if (kind === "write" && typeof v === "number" && !Number.isFinite(v)) {
        result.hidden = false;
        result.className = "result bad";
        result.textContent = "Enter a number.";
        return;
      }
      pending = kind;
      confirmBox.hidden = false;
      confirmBox.textContent =
        kind === "write"
          ? `Write ${fmtValue(p, v)} ${unitsText(p.units)} to ${p.name || p.point} at priority ${prio.value}? This commands real equipment.`
          : `Relinquish priority ${prio.value} of ${p.name || p.point}? The next lower priority takes over.`;
      (kind === "write" ? submit : relinquish).textContent = "Confirm";
      result.hidden = true;
      return;
    }
    submit.disabled = relinquish.disabled = true;
    const base = `/api/gateways/${encodeURIComponent(gateway)}/devices/${device}/points/${p.point}`;
    try {
      const r =
        kind === "write"
          ? await api(`${base}/write`, {
              method: "POST",
              body: { value: value(), priority: Number(prio.value) },
            })
          : await api(`${base}/relinquish`, { method: "POST", body: { priority: Number(prio.value) } });
      result.className = "result";
      result.textContent = `${kind === "write" ? "Written" : "Relinquished"}: present value is now ${fmtValue(p, r.data.present_value)} ${unitsText(p.units)} (priority ${r.data.priority}).`;
      const c = r.data.present_value;
      p.latest = { ...(p.latest || {}), value: typeof c === "boolean" ? Number(c) : c, time: r.data.ts };
    } catch (err) {
      result.className = "result bad";
      result.textContent = `${err.code ? `${err.code}: ` : ""}${err.message}`;
    }
    result.hidden = false;
    confirmBox.hidden = true;
    pending = null;
    submit.textContent = "Write…";
    relinquish.textContent = "Relinquish…";
    submit.disabled = relinquish.disabled = false;
  }
  submit.onclick = () => run("write");
  relinquish.onclick = () => run("relinquish");
  dlg.showModal();
  dlg.addEventListener(
    "close",
    () => {
      if (location.hash.startsWith("#/device/")) void route();
    },
    { once: true },
  );
}

// ---- audit -----------------------------------------------------------------------------------

async function auditView(view) {
  const tbody = h("tbody");
  view.replaceChildren(
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Audit log"),
      h("span", { class: "muted" }, "every write attempt, newest first"),
    ),
    h(
      "section",
      { class: "panel" },
      h(
        "table",
        { id: "audit" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, "Time"),
            h("th", {}, "Who"),
            h("th", {}, "Source"),
            h("th", {}, "Gateway / device"),
            h("th", {}, "Point"),
            h("th", { class: "num" }, "Value"),
            h("th", { class: "num" }, "Priority"),
            h("th", {}, "Result"),
          ),
        ),
        tbody,
      ),
    ),
  );
  async function load() {
    const { items } = await api("/api/audit?limit=200");
    tbody.replaceChildren(
      ...items.map((a) =>
        h(
          "tr",
          {},
          h("td", { class: "nowrap" }, fmtTime(a.time)),
          h("td", {}, a.actor || "—"),
          h("td", {}, a.source || "—"),
          h(
            "td",
            {},
            h(
              "a",
              { href: `#/device/${encodeURIComponent(a.gateway_id)}/${a.device_instance}` },
              `${a.gateway_id} / ${a.device_instance}`,
            ),
          ),
          h("td", {}, a.point || "—"),
          h("td", { class: "num" }, a.value === null ? "relinquish" : JSON.stringify(a.value)),
          h("td", { class: "num" }, a.priority ?? "—"),
          h(
            "td",
            { title: a.error_message || "" },
            h("span", { class: `badge ${resultClass(a.result)}` }, a.result || "pending"),
            a.error_code ? h("div", { class: "muted" }, a.error_code) : null,
          ),
        ),
      ),
    );
    if (items.length === 0)
      tbody.replaceChildren(
        h("tr", {}, h("td", { colspan: 8, class: "empty-state" }, "No write attempts yet.")),
      );
  }
  await load();
  return onLive((event) => {
    if (event === "write") setTimeout(load, 300);
  });
}

/** ok/accepted (the gateway's word for ok on its own event feed) green; no result yet amber. */
function resultClass(result) {
  if (result === "ok" || result === "accepted") return "ok";
  return result ? "bad" : "warn";
}

// ---- router ----------------------------------------------------------------------------------

let cleanup = null;
async function route() {
  const view = $("#view");
  cleanup?.();
  cleanup = null;
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = (path || "/").split("/").filter(Boolean);
  for (const a of document.querySelectorAll("[data-nav]"))
    a.classList.toggle("active", a.dataset.nav === (parts[0] === "audit" ? "audit" : "inventory"));
  try {
    if (parts[0] === "device" && parts.length === 3)
      cleanup = await deviceView(view, decodeURIComponent(parts[1]), Number(parts[2]));
    else if (parts[0] === "audit") cleanup = await auditView(view);
    else cleanup = await inventoryView(view, params);
  } catch (err) {
    view.replaceChildren(
      h(
        "div",
        { class: "panel empty-state" },
        err.status === 401 ? "An API key is needed: use the “API key” button." : err.message,
      ),
    );
  }
}

// ---- key dialog ------------------------------------------------------------------------------

function openKeyDialog() {
  const dlg = $("#key-dialog");
  if (dlg.open) return;
  $("#key-input").value = state.key;
  dlg.showModal();
}
$("#key-button").addEventListener("click", openKeyDialog);
$("#key-dialog").addEventListener("close", () => {
  const action = $("#key-dialog").returnValue;
  if (action === "save") state.key = $("#key-input").value.trim();
  if (action === "clear") state.key = "";
  if (action === "save" || action === "clear") {
    if (state.key) localStorage.setItem("bacmqtt.key", state.key);
    else localStorage.removeItem("bacmqtt.key");
    void connectLive();
    void route();
  }
});

window.addEventListener("hashchange", route);
void connectLive();
void route();
