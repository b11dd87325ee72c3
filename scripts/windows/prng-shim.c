/* bcryptprimitives.dll for Wine 8, which lacks ProcessPrng (Rust's standard library on
 * Windows imports it for HashMap keys and random numbers). Placed next to vhdforge.exe for
 * the Wine smoke tests only; real Windows (8 and later) has its own. The bytes come from
 * advapi32's RtlGenRandom (exported as SystemFunction036), the system's CSPRNG. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Same contract as Windows' ProcessPrng: fill `data` with `len` random bytes, return TRUE. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        /* RtlGenRandom takes a 32-bit length: feed it in pieces. */
        ULONG piece = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, piece))
            return FALSE;
        data += piece;
        len -= piece;
    }
    return TRUE;
}
