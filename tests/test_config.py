import pytest

import relpos


def test_show_config_prints_facts(capsys):
    relpos.show_config()
    out = capsys.readouterr().out
    for word in ("relpos", "OpenMP", "threads", "SIMD path", "compiler", "CFLAGS"):
        assert word in out


def test_set_get_num_threads_roundtrip(threads):
    assert threads(1, relpos.get_num_threads) == 1
    assert threads(2, relpos.get_num_threads) == 2


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad(bad, exc):
    with pytest.raises(exc, match="n must"):
        relpos.set_num_threads(bad)


@pytest.mark.skipif(__import__("os").environ.get("RELPOS_REQUIRE_OPENMP") != "1",
                    reason="only meaningful where the build was required to have OpenMP (CI)")
def test_openmp_required_in_ci():
    assert relpos.config()["openmp"] is True
