@echo off
rem Runs the bacmqtt gateway in this console window (Ctrl+C stops it cleanly), with the same
rem configuration file as the Windows service. Stop the service first if it is running:
rem     net stop bacmqtt-gateway
rem Extra arguments are passed to `bacmqtt gateway`, e.g.  bacmqtt-gateway.cmd --interface Ethernet
rem Run `bacmqtt-gateway.cmd doctor` to check the network, the broker and the configuration instead.
setlocal

rem Installed layout: %ProgramFiles%\bacmqtt\deploy\windows\ ; checkout layout: <repo>\deploy\windows\
set "BACMQTT_ROOT=%~dp0..\.."
if not exist "%BACMQTT_ROOT%\bin\bacmqtt.mjs" (
  echo bacmqtt: cannot find bin\bacmqtt.mjs under "%BACMQTT_ROOT%" 1>&2
  exit /b 1
)

where node >nul 2>nul
if errorlevel 1 (
  echo bacmqtt: Node.js is not on PATH. Install Node.js 20 or newer from https://nodejs.org 1>&2
  exit /b 1
)

if not defined BACMQTT_CONFIG set "BACMQTT_CONFIG=%ProgramData%\bacmqtt\gateway.yaml"
if not exist "%BACMQTT_CONFIG%" (
  echo bacmqtt: no configuration at "%BACMQTT_CONFIG%"; run deploy\windows\install.ps1 or set BACMQTT_CONFIG 1>&2
  exit /b 1
)

set "COMMAND=gateway"
if /i "%~1"=="doctor" (
  set "COMMAND=doctor"
  shift
)

rem `shift` does not change %*, so collect the remaining arguments by hand.
set "ARGS="
:collect
if "%~1"=="" goto run
set ARGS=%ARGS% %1
shift
goto collect

:run
node --max-old-space-size=256 "%BACMQTT_ROOT%\bin\bacmqtt.mjs" %COMMAND% --config "%BACMQTT_CONFIG%" %ARGS%
exit /b %ERRORLEVEL%
