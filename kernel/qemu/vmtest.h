/*
 * Shared by the static /init programs of the qemu proofs (ixunlink-test.c,
 * composefs-test.c): one console line per rule and the closing summary, which
 * kernel/qemutest.py parses:
 *
 *   <TAG>-TEST <rule> PASS|FAIL <detail>
 *   <TAG>-SUMMARY passed=<n> failed=<n>
 *
 * Define TEST_TAG (e.g. "IXUNLINK") before including this file.
 */
#include <stdarg.h>
#include <stdio.h>

static int passed, failed;

static void result(const char *rule, int ok, const char *fmt, ...)
{
	char detail[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	printf(TEST_TAG "-TEST %s %s %s\n", rule, ok ? "PASS" : "FAIL", detail);
	fflush(stdout);
	if (ok)
		passed++;
	else
		failed++;
}

static void summary(void)
{
	printf(TEST_TAG "-SUMMARY passed=%d failed=%d\n", passed, failed);
	fflush(stdout);
}
