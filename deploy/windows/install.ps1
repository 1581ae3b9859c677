#Requires -Version 5.1
<#
.SYNOPSIS
    Installs the bacmqtt BACnet/IP gateway as a Windows service.

.DESCRIPTION
    Run from an unpacked bacmqtt release or a git checkout, in an elevated PowerShell:

        powershell -ExecutionPolicy Bypass -File deploy\windows\install.ps1 -MqttUrl mqtt://192.0.2.20:1883

    What it does, in order (each step is idempotent; re-running upgrades in place):
      1. Checks it runs as Administrator and that Node.js 20 or newer and npm are installed
         (it does not install Node.js: use the LTS installer from nodejs.org or `winget install
         OpenJS.NodeJS.LTS`).
      2. Copies the application to -InstallDir and installs its production dependencies with
         `npm ci --omit=dev` (from the npm registry, as any npm install does).
      3. Writes -ConfigDir\gateway.yaml unless it exists (an existing file is never overwritten), and
         restricts -ConfigDir to SYSTEM, Administrators and the service account.
      4. Opens UDP 47808 (or -BacnetPort) inbound in Windows Defender Firewall for node.exe, on the
         Domain and Private profiles only.
      5. Installs the Windows service with WinSW 2.12.0 (MIT, https://github.com/winsw/winsw): a
         single executable that runs node.exe as a service, restarts it on failure, rolls its logs
         and stops it with Ctrl+C so the gateway publishes "offline" before it exits.
         WinSW is taken from -WinSWPath when given (offline installs). Otherwise it is downloaded
         from the pinned GitHub release URL below, and the script announces the download and
         refuses the file unless its SHA-256 is the pinned one. The service runs as
         NT AUTHORITY\LocalService, not LocalSystem.
      6. Starts the service.

    Uninstall: deploy\windows\uninstall.ps1 (see docs/deploy.md).

.PARAMETER MqttUrl
    Broker URL the gateway publishes to, e.g. mqtt://192.0.2.20:1883 (the docker-compose host).
#>
[CmdletBinding()]
param(
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'bacmqtt'),
    [string]$ConfigDir = (Join-Path $env:ProgramData 'bacmqtt'),
    [string]$MqttUrl = 'mqtt://127.0.0.1:1883',
    [string]$MqttUsername = '',
    [string]$GatewayId = ($env:COMPUTERNAME.ToLowerInvariant() -replace '[^a-z0-9_-]', '-'),
    [string]$Interface = '',
    [string]$Bbmd = '',
    [ValidateRange(1, 65535)]
    [int]$BacnetPort = 47808,
    [string]$ServiceName = 'bacmqtt-gateway',
    [string]$WinSWPath = '',
    [switch]$SkipFirewall,
    [switch]$NoStart
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Pinned service wrapper. Update the three together.
$WinSWVersion = '2.12.0'
$WinSWUrl = "https://github.com/winsw/winsw/releases/download/v$WinSWVersion/WinSW.NET461.exe"
$WinSWSha256 = 'B5066B7BBDFBA1293E5D15CDA3CAAEA88FBEAB35BD5B38C41C913D492AADFC4F'

$MinNodeMajor = 20
$FirewallRuleName = "bacmqtt-bacnet-udp-$BacnetPort"
$SourceDir = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path

function Write-Step([string]$Message) {
    Write-Host "==> $Message" -ForegroundColor Cyan
}

function Test-Administrator {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Get-NodeExecutable {
    $node = Get-Command node.exe -ErrorAction SilentlyContinue
    if (-not $node) {
        throw "Node.js was not found on PATH. Install Node.js $MinNodeMajor LTS or newer (https://nodejs.org or 'winget install OpenJS.NodeJS.LTS'), open a new PowerShell and run this script again."
    }
    $version = (& $node.Source --version).Trim()
    if ($version -notmatch '^v(\d+)\.') {
        throw "Could not read the Node.js version from '$version'."
    }
    if ([int]$Matches[1] -lt $MinNodeMajor) {
        throw "Node.js $version is too old: bacmqtt needs $MinNodeMajor or newer."
    }
    Write-Host "    Node.js $version at $($node.Source)"
    return $node.Source
}

function Get-VerifiedWinSW([string]$Destination) {
    if ($WinSWPath) {
        if (-not (Test-Path -LiteralPath $WinSWPath)) { throw "-WinSWPath '$WinSWPath' does not exist." }
        Copy-Item -LiteralPath $WinSWPath -Destination $Destination -Force
    }
    elseif (Test-Path -LiteralPath $Destination) {
        Write-Host "    using the WinSW already installed at $Destination"
    }
    else {
        Write-Host "    Downloading WinSW $WinSWVersion from $WinSWUrl"
        Write-Host "    (pass -WinSWPath to use a copy you downloaded yourself)"
        [Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
        $partial = "$Destination.download"
        Invoke-WebRequest -UseBasicParsing -Uri $WinSWUrl -OutFile $partial
        Move-Item -LiteralPath $partial -Destination $Destination -Force
    }
    $actual = (Get-FileHash -LiteralPath $Destination -Algorithm SHA256).Hash
    if ($actual -ne $WinSWSha256) {
        Remove-Item -LiteralPath $Destination -Force
        throw "WinSW checksum mismatch: expected $WinSWSha256, got $actual. The file was deleted; nothing was installed."
    }
    Write-Host "    WinSW SHA-256 verified ($WinSWSha256)"
}

function ConvertTo-YamlString([string]$Value) {
    return "'" + ($Value -replace "'", "''") + "'"
}

function Write-GatewayConfig([string]$Path, [string]$DataDir) {
    if (Test-Path -LiteralPath $Path) {
        Write-Host "    keeping the existing $Path"
        return
    }
    $lines = @(
        '# bacmqtt gateway settings. Every key, its default and meaning: docs/gateway.md.',
        '# Environment variables BACMQTT_GATEWAY__<SECTION>__<KEY> override this file.',
        "gateway_id: $(ConvertTo-YamlString $GatewayId)",
        "data_dir: $(ConvertTo-YamlString $DataDir)",
        'mqtt:',
        "  url: $(ConvertTo-YamlString $MqttUrl)"
    )
    if ($MqttUsername) {
        $secure = Read-Host -AsSecureString "MQTT password for $MqttUsername"
        $plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR(
            [Runtime.InteropServices.Marshal]::SecureStringToBSTR($secure))
        $lines += "  username: $(ConvertTo-YamlString $MqttUsername)"
        $lines += "  password: $(ConvertTo-YamlString $plain)"
    }
    $lines += 'bacnet:'
    $lines += "  port: $BacnetPort"
    if ($Interface) { $lines += "  interface: $(ConvertTo-YamlString $Interface)" }
    if ($Bbmd) { $lines += "  bbmd: $(ConvertTo-YamlString $Bbmd)" }
    # UTF-8 without a BOM: the YAML parser takes a BOM for content.
    [IO.File]::WriteAllLines($Path, [string[]]$lines, (New-Object Text.UTF8Encoding($false)))
    Write-Host "    wrote $Path"
}

function Set-ConfigAcl([string]$Dir) {
    # Only SYSTEM, Administrators and the service account; the file may hold the MQTT password.
    & icacls.exe $Dir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' '*S-1-5-19:(OI)(CI)M' | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls failed on $Dir (exit $LASTEXITCODE)." }
}

function Write-ServiceXml([string]$Path, [string]$NodeExe) {
    $entry = Join-Path $InstallDir 'bin\bacmqtt.mjs'
    $config = Join-Path $ConfigDir 'gateway.yaml'
    $logs = Join-Path $ConfigDir 'logs'
    $xml = @"
<service>
  <id>$ServiceName</id>
  <name>bacmqtt gateway</name>
  <description>BACnet/IP to MQTT gateway (bacmqtt). Configuration: $config</description>
  <executable>$NodeExe</executable>
  <arguments>--max-old-space-size=256 "$entry" gateway --config "$config"</arguments>
  <workingdirectory>$ConfigDir</workingdirectory>
  <env name="BACMQTT_LOG_LEVEL" value="info" />
  <startmode>Automatic</startmode>
  <delayedAutoStart>true</delayedAutoStart>
  <stoptimeout>30 sec</stoptimeout>
  <onfailure action="restart" delay="10 sec" />
  <onfailure action="restart" delay="30 sec" />
  <onfailure action="restart" delay="60 sec" />
  <resetfailure>1 hour</resetfailure>
  <logpath>$logs</logpath>
  <log mode="roll-by-size">
    <sizeThreshold>10240</sizeThreshold>
    <keepFiles>8</keepFiles>
  </log>
</service>
"@
    [IO.File]::WriteAllText($Path, $xml, (New-Object Text.UTF8Encoding($false)))
}

# --- 1. prerequisites --------------------------------------------------------------------------
Write-Step 'Checking prerequisites'
if (-not (Test-Administrator)) {
    throw 'Run this script in an elevated PowerShell (Run as administrator).'
}
$NodeExe = Get-NodeExecutable
if (-not (Get-Command npm.cmd -ErrorAction SilentlyContinue)) {
    throw 'npm was not found on PATH; reinstall Node.js with npm included.'
}

# --- 2. application ----------------------------------------------------------------------------
Write-Step "Installing bacmqtt to $InstallDir"
$existing = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($existing -and $existing.Status -ne 'Stopped') {
    Write-Host "    stopping $ServiceName for the upgrade"
    Stop-Service -Name $ServiceName -Force
}
New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
if ($SourceDir -ne (Resolve-Path $InstallDir).Path) {
    & robocopy.exe $SourceDir $InstallDir /MIR /NFL /NDL /NJH /NJS /NP `
        /XD node_modules .git .data test bench coverage dist `
        /XF .env *.log bacmqtt-gateway.exe bacmqtt-gateway.xml | Out-Null
    # robocopy: 0-7 are success codes, 8 and above are failures.
    if ($LASTEXITCODE -ge 8) { throw "robocopy failed (exit $LASTEXITCODE)." }
}
Push-Location $InstallDir
try {
    & npm.cmd ci '--omit=dev' --no-audit --no-fund
    if ($LASTEXITCODE -ne 0) { throw "npm ci failed (exit $LASTEXITCODE)." }
}
finally {
    Pop-Location
}
& $NodeExe (Join-Path $InstallDir 'bin\bacmqtt.mjs') --version
if ($LASTEXITCODE -ne 0) { throw 'The installed bacmqtt does not start; see the error above.' }

# --- 3. configuration --------------------------------------------------------------------------
Write-Step "Writing the configuration in $ConfigDir"
$DataDir = Join-Path $ConfigDir 'data'
New-Item -ItemType Directory -Force -Path $ConfigDir, $DataDir, (Join-Path $ConfigDir 'logs') | Out-Null
Write-GatewayConfig -Path (Join-Path $ConfigDir 'gateway.yaml') -DataDir $DataDir
Set-ConfigAcl -Dir $ConfigDir

# --- 4. firewall -------------------------------------------------------------------------------
if ($SkipFirewall) {
    Write-Step 'Skipping the firewall rule (-SkipFirewall)'
}
else {
    Write-Step "Allowing UDP $BacnetPort in for node.exe (Domain, Private)"
    Get-NetFirewallRule -Name $FirewallRuleName -ErrorAction SilentlyContinue | Remove-NetFirewallRule
    New-NetFirewallRule -Name $FirewallRuleName -DisplayName "bacmqtt BACnet/IP (UDP $BacnetPort)" `
        -Description 'BACnet/IP Who-Is/I-Am and confirmed services for the bacmqtt gateway' `
        -Direction Inbound -Protocol UDP -LocalPort $BacnetPort -Program $NodeExe `
        -Profile @('Domain', 'Private') -Action Allow | Out-Null
}

# --- 5. service --------------------------------------------------------------------------------
Write-Step "Installing the $ServiceName service (WinSW $WinSWVersion)"
$ServiceExe = Join-Path $InstallDir "$ServiceName.exe"
Get-VerifiedWinSW -Destination $ServiceExe
Write-ServiceXml -Path (Join-Path $InstallDir "$ServiceName.xml") -NodeExe $NodeExe
if (-not $existing) {
    & $ServiceExe install
    if ($LASTEXITCODE -ne 0) { throw "WinSW install failed (exit $LASTEXITCODE)." }
}
# Least privilege: LocalService instead of WinSW's default LocalSystem. (Through CIM rather than
# sc.exe, which needs an empty `password=` argument that Windows PowerShell 5.1 drops.)
$wmiService = Get-CimInstance -ClassName Win32_Service -Filter "Name='$ServiceName'"
$change = Invoke-CimMethod -InputObject $wmiService -MethodName Change `
    -Arguments @{ StartName = 'NT AUTHORITY\LocalService'; StartPassword = '' }
if ($change.ReturnValue -ne 0) { throw "Could not set the service account (Win32_Service.Change returned $($change.ReturnValue))." }

# --- 6. start ----------------------------------------------------------------------------------
if ($NoStart) {
    Write-Step "Installed; start it with: Start-Service $ServiceName"
}
else {
    Write-Step "Starting $ServiceName"
    Start-Service -Name $ServiceName
    Get-Service -Name $ServiceName | Format-Table -AutoSize -Property @('Name', 'Status', 'StartType')
}
Write-Host ''
Write-Host "Configuration: $(Join-Path $ConfigDir 'gateway.yaml')  (restart the service after editing)"
Write-Host "Logs:          $(Join-Path $ConfigDir 'logs')"
Write-Host "Check:         & '$NodeExe' '$(Join-Path $InstallDir 'bin\bacmqtt.mjs')' doctor --config '$(Join-Path $ConfigDir 'gateway.yaml')'"
