#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "dhps/error.h"

static void names_every_code(void **state)
{
    (void)state;
    assert_string_equal(dhps_strerror(0), "success");
    assert_string_equal(dhps_strerror(-ENOMEM), strerror(ENOMEM));
    for (int e = DHPS_E_BASE - 1; e > DHPS_E_LAST; e--)
        assert_string_not_equal(dhps_strerror(e), "unknown error");
    assert_string_equal(dhps_strerror(DHPS_E_LAST), "unknown error");
    assert_string_equal(dhps_strerror(-20000), "unknown error");
    assert_string_equal(dhps_strerror(5), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(names_every_code)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
