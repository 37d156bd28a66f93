; MPS for Windows: a per-user installer (no administrator rights), made with Inno Setup 6.
;
; Build it on Windows with installer\windows\build_windows.ps1: it freezes dist\mps with
; installer\mps.spec first and passes the version read from pyproject.toml (/DAppVersion=...).
; The default below is for building by hand; tests/test_installer.py checks that it, the
; names, the executable and the icon agree with pyproject.toml and the spec.
;
; Installs into %LOCALAPPDATA%\Programs\MPS, adds a Start-menu shortcut, offers a desktop
; shortcut (unticked by default) and registers an uninstaller in "Apps & features".

#define AppName "MPS"
#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppExeName "mps-gui.exe"
#define AppPublisher "The MPS developers"
#define BundleDir "..\..\dist\mps"

[Setup]
; one fixed id for every version, so an upgrade replaces the previous installation
AppId={{BB294227-35DA-5F15-98A8-8AC217A81A5B}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher={#AppPublisher}
PrivilegesRequired=lowest
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
LicenseFile=..\..\LICENSE
OutputDir=..\..\dist
OutputBaseFilename=mps-{#AppVersion}-windows-x64-setup
SetupIconFile=..\icons\mps.ico
UninstallDisplayIcon={app}\{#AppExeName}
UninstallDisplayName={#AppName} {#AppVersion}
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#AppExeName}"; IconFilename: "{app}\{#AppExeName}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExeName}"; IconFilename: "{app}\{#AppExeName}"; Tasks: desktopicon
Name: "{autoprograms}\Uninstall {#AppName}"; Filename: "{uninstallexe}"

[Run]
Filename: "{app}\{#AppExeName}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; files the app may have written into its own folder (e.g. numba's compile cache)
Type: filesandordirs; Name: "{app}"
