/* The CPU list parser and formatter of the dhps tools (src/tools/tools.c; dhps bench's
 * --server-cpus): accepted lists, the reason given for each kind of bad one, and the
 * formatter joining ranges so that its output parses back to the same set. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>
#include <string.h>

#include "tools.h"

static void accepted(void **state)
{
    (void)state;
    bool in[16];
    char why[128], out[64];
    assert_int_equal(tools_parse_cpu_list("3", 16, in, why, sizeof why), 1);
    assert_true(in[3] && !in[2] && !in[4]);
    assert_int_equal(tools_parse_cpu_list("0-3,6", 16, in, why, sizeof why), 5);
    assert_true(in[0] && in[3] && !in[4] && in[6]);
    assert_int_equal(tools_parse_cpu_list("1,1,0-1", 16, in, why, sizeof why), 2);
    assert_int_equal(tools_parse_cpu_list("007", 16, in, why, sizeof why), 1);
    assert_true(in[7]);
    assert_int_equal(tools_parse_cpu_list("15", 16, in, why, sizeof why), 1);
    /* the formatter joins runs and parses back to the same set */
    assert_int_equal(tools_parse_cpu_list("5,0,1,2,9-10,12", 16, in, why, sizeof why), 7);
    assert_int_equal(tools_format_cpu_list(in, 16, out, sizeof out), strlen("0-2,5,9-10,12"));
    assert_string_equal(out, "0-2,5,9-10,12");
    bool back[16];
    assert_int_equal(tools_parse_cpu_list(out, 16, back, why, sizeof why), 7);
    assert_memory_equal(in, back, sizeof in);
    /* too small a buffer: truncated, the full length returned */
    char small[4];
    assert_int_equal(tools_format_cpu_list(in, 16, small, sizeof small), 13);
    assert_int_equal(strlen(small) < sizeof small, true);
    memset(in, 0, sizeof in);
    assert_int_equal(tools_format_cpu_list(in, 16, out, sizeof out), 0);
    assert_string_equal(out, "");
}

static void refused(void **state)
{
    (void)state;
    static const struct {
        const char *s, *why;
    } bad[] = {
        {"", "empty"},          {"x", "expected at 'x'"},   {"0-", "has no end"},
        {"5-2", "backwards"},   {"16", "past"},             {"0-16", "past"},
        {"1,", "after the last"}, {"0,,1", "expected at ',1'"}, {"-1", "expected at '-1'"},
        {"1 ", "unexpected ' '"}, {"+1", "expected"},        {"99999999999999999999", "past"},
        {"0x1", "unexpected 'x'"},
    };
    bool in[16];
    char why[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = 0;
        if (tools_parse_cpu_list(bad[i].s, 16, in, why, sizeof why) != -1 ||
            !strstr(why, bad[i].why))
            fail_msg("'%s': want a refusal with '%s', got '%s'", bad[i].s, bad[i].why, why);
    }
    assert_int_equal(tools_parse_cpu_list(NULL, 16, in, why, sizeof why), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(accepted), cmocka_unit_test(refused)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
