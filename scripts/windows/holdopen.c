/* Test helper for the Wine smoke tests: hold a file open the way a running Hyper-V VM holds
 * its disk (read/write, sharing nothing), print "held" once it is, and keep it until killed
 * or until the given number of seconds has passed. Usage: holdopen.exe FILE SECONDS */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

int wmain(int argc, wchar_t **argv)
{
    if (argc != 3) {
        fputs("usage: holdopen FILE SECONDS\n", stderr);
        return 2;
    }
    HANDLE h = CreateFileW(argv[1], GENERIC_READ | GENERIC_WRITE, 0 /* share nothing */, NULL,
                           OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    if (h == INVALID_HANDLE_VALUE) {
        fprintf(stderr, "holdopen: cannot open (error %lu)\n", GetLastError());
        return 1;
    }
    puts("held");
    fflush(stdout);
    Sleep((DWORD)_wtoi(argv[2]) * 1000);
    CloseHandle(h);
    return 0;
}
