/*
 * ProcessPrng for Wine 8.0, which lacks bcryptprimitives.dll: Rust's standard library (since
 * 1.78) takes its randomness from ProcessPrng there, so without this DLL a Rust program for
 * Windows does not start under Debian 12's Wine. It answers from RtlGenRandom (advapi32's
 * SystemFunction036), the generator Windows itself had before ProcessPrng. Test prefixes only
 * (scripts/wine.sh copies it into system32); real Windows has its own.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
