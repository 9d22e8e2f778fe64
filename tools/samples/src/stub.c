/*
 * patchcast sample installer stub.
 *
 * A minimal, CRT-free Windows console program: writes one line to stdout
 * and exits with code 0. Built with -nostdlib and a custom entry point so
 * the resulting PE stays a few KiB in size. The message is selected at
 * compile time with -DSTUB_MESSAGE_ID=<n> (see MESSAGES below).
 */
#include <windows.h>

#ifndef STUB_MESSAGE_ID
#error "define STUB_MESSAGE_ID"
#endif

#if STUB_MESSAGE_ID == 958644
#define STUB_MESSAGE "KB958644 installed\r\n"
#elif STUB_MESSAGE_ID == 2286198
#define STUB_MESSAGE "KB2286198 installed\r\n"
#elif STUB_MESSAGE_ID == 981550
#define STUB_MESSAGE "KB981550 installed\r\n"
#elif STUB_MESSAGE_ID == 948465
#define STUB_MESSAGE "Windows Server 2008 Service Pack 2 (KB948465) installed\r\n"
#elif STUB_MESSAGE_ID == 0
#define STUB_MESSAGE "patchcast noversion sample\r\n"
#else
#error "unknown STUB_MESSAGE_ID"
#endif

void __stdcall stub_entry(void)
{
    static const char msg[] = STUB_MESSAGE;
    DWORD written = 0;
    HANDLE out = GetStdHandle(STD_OUTPUT_HANDLE);
    if (out != NULL && out != INVALID_HANDLE_VALUE) {
        WriteFile(out, msg, (DWORD)(sizeof(msg) - 1), &written, NULL);
    }
    ExitProcess(0);
}
