/*
 * patchcast sample library: a minimal, CRT-free DLL with one export.
 * Used as a file-version detection sample (VERSIONINFO in pcsample.rc).
 */
#include <windows.h>

BOOL WINAPI pcsample_dll_entry(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst;
    (void)reason;
    (void)reserved;
    return TRUE;
}

/* Returns the packed file version 6.0.6002.18287 as (major<<48|minor<<32|build<<16|rev). */
__declspec(dllexport) unsigned long long pcsample_version(void)
{
    return (6ULL << 48) | (0ULL << 32) | (6002ULL << 16) | 18287ULL;
}
