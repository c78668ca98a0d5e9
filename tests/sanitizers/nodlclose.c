/* LD_PRELOADed in the sanitizer test runs (scripts/test.sh, TMDFLOW_SANITIZE=1): dlclose()
 * does nothing, so the plugins Open MPI dlopens (mca_*.so) stay mapped until exit and
 * LeakSanitizer can name them in stack traces — otherwise their one-time start-up
 * allocations show as "<unknown module>" and cannot be told apart from tmdflow's own leaks
 * by the suppressions in lsan.supp. Nothing else changes: the libraries are unloaded at
 * process exit as usual. */
int dlclose(void *handle)
{
    (void)handle;
    return 0;
}
