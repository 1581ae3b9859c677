#Requires -Version 5.1
<#
.SYNOPSIS
    Removes the bacmqtt gateway service, its firewall rule and its program folder.

.DESCRIPTION
    Run in an elevated PowerShell:

        powershell -ExecutionPolicy Bypass -File "C:\Program Files\bacmqtt\deploy\windows\uninstall.ps1"

    The configuration, the store-and-forward buffer and the logs in -ConfigDir are kept unless
    -RemoveData is given (readings still buffered there have not reached the broker yet).
#>
[CmdletBinding()]
param(
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'bacmqtt'),
    [string]$ConfigDir = (Join-Path $env:ProgramData 'bacmqtt'),
    [ValidateRange(1, 65535)]
    [int]$BacnetPort = 47808,
    [string]$ServiceName = 'bacmqtt-gateway',
    [switch]$RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$identity = [Security.Principal.WindowsIdentity]::GetCurrent()
if (-not (New-Object Security.Principal.WindowsPrincipal($identity)).IsInRole(
        [Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'Run this script in an elevated PowerShell (Run as administrator).'
}

$service = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($service) {
    Write-Host "==> Stopping and removing the $ServiceName service"
    if ($service.Status -ne 'Stopped') { Stop-Service -Name $ServiceName -Force }
    $serviceExe = Join-Path $InstallDir "$ServiceName.exe"
    if (Test-Path -LiteralPath $serviceExe) {
        & $serviceExe uninstall
        if ($LASTEXITCODE -ne 0) { throw "WinSW uninstall failed (exit $LASTEXITCODE)." }
    }
    else {
        & sc.exe delete $ServiceName | Out-Null
    }
}

$rule = Get-NetFirewallRule -Name "bacmqtt-bacnet-udp-$BacnetPort" -ErrorAction SilentlyContinue
if ($rule) {
    Write-Host "==> Removing the firewall rule for UDP $BacnetPort"
    $rule | Remove-NetFirewallRule
}

if (Test-Path -LiteralPath $InstallDir) {
    Write-Host "==> Removing $InstallDir"
    # This script may itself live in $InstallDir: leave it before deleting.
    Set-Location $env:SystemRoot
    Remove-Item -LiteralPath $InstallDir -Recurse -Force
}

if ($RemoveData) {
    if (Test-Path -LiteralPath $ConfigDir) {
        Write-Host "==> Removing $ConfigDir (configuration, buffer, logs)"
        Remove-Item -LiteralPath $ConfigDir -Recurse -Force
    }
}
else {
    Write-Host "Kept $ConfigDir (configuration, buffer, logs); pass -RemoveData to delete it."
}
