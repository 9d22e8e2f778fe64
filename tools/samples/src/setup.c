/*
 * patchcast sample EXE installer ("patchcast sample tool 2.0").
 *
 * What an ordinary vendor setup.exe does, in a few KiB and without the C runtime: copies
 * pctool.dll from its own directory to %ProgramFiles%\patchcast sample tool\, records
 * HKLM\SOFTWARE\patchcast samples\tool\Version = "2.0" (64-bit view), prints one line and
 * exits 3010 (ERROR_SUCCESS_REBOOT_REQUIRED: installed, a restart completes it). Any failure
 * exits 1603 (ERROR_INSTALL_FAILURE) after saying which step failed.
 */
#include <windows.h>

static void say(const char *msg)
{
    DWORD written = 0, len = 0;
    HANDLE out = GetStdHandle(STD_OUTPUT_HANDLE);
    while (msg[len]) len++;
    if (out != NULL && out != INVALID_HANDLE_VALUE)
        WriteFile(out, msg, len, &written, NULL);
}

static void fail(const char *step)
{
    say("patchcast sample tool: ");
    say(step);
    say(" failed\r\n");
    ExitProcess(1603);
}

/* dst = a + b (both NUL-terminated), within cap characters. */
static int join(WCHAR *dst, DWORD cap, const WCHAR *a, const WCHAR *b)
{
    DWORD n = 0;
    for (; *a; a++) { if (n + 1 >= cap) return 0; dst[n++] = *a; }
    for (; *b; b++) { if (n + 1 >= cap) return 0; dst[n++] = *b; }
    dst[n] = 0;
    return 1;
}

void __stdcall setup_entry(void)
{
    WCHAR self[MAX_PATH], src[MAX_PATH], dir[MAX_PATH], dst[MAX_PATH];
    DWORD n = GetModuleFileNameW(NULL, self, MAX_PATH);
    if (n == 0 || n >= MAX_PATH) fail("finding the setup directory");
    while (n > 0 && self[n - 1] != L'\\' && self[n - 1] != L'/') n--;
    self[n] = 0;
    if (!join(src, MAX_PATH, self, L"pctool.dll")) fail("naming the library");
    if (!ExpandEnvironmentStringsW(L"%ProgramFiles%\\patchcast sample tool", dir, MAX_PATH))
        fail("expanding %ProgramFiles%");
    if (!CreateDirectoryW(dir, NULL) && GetLastError() != ERROR_ALREADY_EXISTS)
        fail("creating the program directory");
    if (!join(dst, MAX_PATH, dir, L"\\pctool.dll")) fail("naming the destination");
    if (!CopyFileW(src, dst, FALSE)) fail("copying pctool.dll");

    HKEY key;
    if (RegCreateKeyExW(HKEY_LOCAL_MACHINE, L"SOFTWARE\\patchcast samples\\tool", 0, NULL, 0,
                        KEY_SET_VALUE | KEY_WOW64_64KEY, NULL, &key, NULL) != ERROR_SUCCESS)
        fail("creating the registry key");
    static const WCHAR version[] = L"2.0";
    if (RegSetValueExW(key, L"Version", 0, REG_SZ, (const BYTE *)version, sizeof(version))
        != ERROR_SUCCESS)
        fail("writing the registry value");
    RegCloseKey(key);

    say("patchcast sample tool 2.0 installed; a restart completes it\r\n");
    ExitProcess(ERROR_SUCCESS_REBOOT_REQUIRED);
}
