; Inno Setup 6 script for mixdesk: installs the PyInstaller folder (dist\mixdesk) per user
; or for all users, with a Start menu entry, an optional desktop icon, `mixdesk` on PATH
; (optional) and an uninstaller. Built by packaging\windows\build_windows.ps1:
;   iscc /DAppVersion=0.1.0 /DVariant=cpu /DDistDir=..\..\dist packaging\windows\mixdesk.iss
; What it does mirrors the .deb: the bundle in one folder, a menu entry, the icon, the command.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef Variant
  #define Variant "cpu"
#endif
#ifndef DistDir
  #define DistDir "..\..\dist"
#endif

[Setup]
AppId={{6F1C2B0E-5D7A-4B8E-9C3F-2A1D0E4B7C61}
AppName=mixdesk
AppVersion={#AppVersion}
AppPublisher=mixdesk developers
AppComments=Chat with Mixtral on your own GPU
DefaultDirName={autopf}\mixdesk
DefaultGroupName=mixdesk
; per-user install by default (no admin prompt); the dialog offers all users
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#DistDir}
OutputBaseFilename=mixdesk-{#AppVersion}-windows-x64-{#Variant}-setup
SetupIconFile=..\..\resources\icons\mixdesk.ico
UninstallDisplayIcon={app}\mixdesk-gui.exe
; torch's DLLs compress well with LZMA2; solid would be smaller but needs as much RAM as the input
Compression=lzma2/normal
SolidCompression=no
WizardStyle=modern
ChangesEnvironment=yes
DisableProgramGroupPage=yes

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add the mixdesk command to my PATH"; GroupDescription: "Command line:"; Flags: unchecked

[Files]
Source: "{#DistDir}\mixdesk\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
; mixdesk-gui.exe is the windowed twin of the console mixdesk.exe (no console window)
Name: "{autoprograms}\mixdesk"; Filename: "{app}\mixdesk-gui.exe"; IconFilename: "{app}\mixdesk-gui.exe"
Name: "{autodesktop}\mixdesk"; Filename: "{app}\mixdesk-gui.exe"; IconFilename: "{app}\mixdesk-gui.exe"; Tasks: desktopicon

[Registry]
; the user's PATH (HKCU); uninstalling leaves the entry, which then points nowhere
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\mixdesk-gui.exe"; Description: "{cm:LaunchProgram,mixdesk}"; Flags: nowait postinstall skipifsilent

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Path: string;
begin
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Path) then
  begin
    Result := True;
    exit;
  end;
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;
