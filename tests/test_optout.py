"""Sites' opt-outs and ldawt's identity, against a real origin on 127.0.0.1: X-Robots-Tag
(opted_out, body not downloaded), robots.txt (robots_disallowed, RFC 9309 failures, one fetch per
host), ``--robots ignore`` and the User-Agent with ``--user-agent-token``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fault_origin import OPTOUT_BYTES, FaultOrigin
from test_shard_faults import run_rows

from ldawt.daemon import metrics
from ldawt.daemon.contract import FAILURES, ShardSpec, Status
from ldawt.daemon.fetcher.options import USER_AGENT, FetchOptions
from ldawt.daemon.fetcher.optout import is_opted_out
from ldawt.manager.cli import fetch_options, parse_args
from ldawt.manager.demo import serve_in_background

BIG = {"max_bytes": 2 * OPTOUT_BYTES, "total_timeout": 20.0, "read_timeout": 5.0}


@pytest.fixture
def origin() -> Iterator[tuple[FaultOrigin, str]]:
    fault_origin = FaultOrigin()
    with serve_in_background(fault_origin.app) as port:
        yield fault_origin, f"http://127.0.0.1:{port}"


def optout_url(base: str, name: str, *headers: str) -> str:
    query = "&".join(f"h={quote(value)}" for value in headers)
    return f"{base}/optout/{name}" + (f"?{query}" if query else "")


# (X-Robots-Tag headers, status with the default directives)
HEADER_CASES = [
    ((), "ok"),
    (("noai",), "opted_out"),
    (("noimageai",), "opted_out"),
    (("noindex",), "opted_out"),
    (("noimageindex",), "opted_out"),
    (("NoAI",), "opted_out"),  # directives are case-insensitive
    (("nofollow",), "ok"),
    (("none",), "opted_out"),  # Google: none = noindex, nofollow
    (("noarchive", "noai"), "opted_out"),  # several headers
    (("nofollow, noimageai",), "opted_out"),  # a comma list
    (("ldawt: noai",), "opted_out"),  # addressed to ldawt
    (("LDAWT: NoIndex, nofollow",), "opted_out"),
    (("otherbot: noai",), "ok"),  # addressed to another agent
    (("otherbot: noai", "nofollow"), "ok"),
    (("otherbot: nofollow", "noai"), "opted_out"),
    (("max-image-preview: large, noai",), "opted_out"),  # a valued directive is no agent
    (("unavailable_after: 25 Jun 2010 15:00:00 PST",), "ok"),
]


def test_x_robots_tag_variants_and_bodies_not_downloaded(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    fault_origin, base = origin
    urls = [optout_url(base, f"p{i}", *headers) for i, (headers, _) in enumerate(HEADER_CASES)]
    result, manifest = run_rows(tmp_path, urls, fetch=BIG)

    assert [row["status"] for row in manifest] == [s for _, s in HEADER_CASES], [
        (row["status"], row["error"]) for row in manifest
    ]
    assert result["counts"]["opted_out"] == sum(s == "opted_out" for _, s in HEADER_CASES)
    for (headers, status), row in zip(HEADER_CASES, manifest, strict=True):
        path = f"/optout/p{manifest.index(row)}"
        assert row["http_status"] == 200
        assert row["attempts"] == 1  # an opt-out is not retried
        if status == "opted_out":
            assert row["bytes"] is None and row["member"] is None
            assert row["error"].startswith("X-Robots-Tag: "), row
            # the connection was closed after the headers: most of the body never left
            assert path in fault_origin.closed_early, (headers, fault_origin.sent[path])
            assert fault_origin.sent[path] < OPTOUT_BYTES / 2, (headers, fault_origin.sent[path])
        else:
            assert row["bytes"] == OPTOUT_BYTES, row
            assert fault_origin.sent[path] == OPTOUT_BYTES
            assert path not in fault_origin.closed_early


def test_empty_directive_list_disables_the_header_check(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    _, base = origin
    urls = [optout_url(base, "a", "noai"), optout_url(base, "b", "none")]
    _, manifest = run_rows(tmp_path, urls, fetch={**BIG, "disallowed_header_directives": []})
    assert [row["status"] for row in manifest] == ["ok", "ok"]


def test_custom_directives(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    _, base = origin
    urls = [optout_url(base, "a", "noai"), optout_url(base, "b", "noarchive")]
    _, manifest = run_rows(
        tmp_path, urls, fetch={**BIG, "disallowed_header_directives": "NoArchive"}
    )
    assert [row["status"] for row in manifest] == ["ok", "opted_out"]


def test_user_agent_token_is_sent_and_addressed(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    fault_origin, base = origin
    fault_origin.robots_txt = "User-agent: *\nDisallow: /private\n"
    urls = [
        f"{base}/img/a.jpg",
        optout_url(base, "b", "mybot: noai"),  # addressed to the user's token: applies
        optout_url(base, "c", "otherbot: noai"),
    ]
    _, manifest = run_rows(tmp_path, urls, fetch={**BIG, "user_agent_token": "mybot"})
    assert [row["status"] for row in manifest] == ["ok", "opted_out", "ok"]
    expected = f"{USER_AGENT} (compatible; mybot)"
    assert fault_origin.user_agents  # robots.txt and images alike
    assert set(fault_origin.user_agents) == {expected}


def test_user_agent_without_token_is_ldawts(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    fault_origin, base = origin
    _, manifest = run_rows(tmp_path, [f"{base}/img/a.jpg"])
    assert manifest[0]["status"] == "ok"
    assert set(fault_origin.user_agents) == {USER_AGENT}
    assert USER_AGENT.startswith("ldawt/")


ROBOTS = """\
User-agent: *
Disallow: /

User-agent: ldawt
Disallow: /img/no
Allow: /img/no-but-yes
Disallow: /*.gif$
Disallow: /img/*/secret
"""


def test_robots_rules_and_one_fetch_per_host(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    fault_origin, base = origin
    fault_origin.robots_txt = ROBOTS
    fault_origin.robots_delay = 0.3  # the rows all wait for the one fetch under way
    cases = [
        ("/img/a.jpg", "ok"),  # ldawt's group applies, not "*" (which disallows everything)
        ("/img/no-thanks.jpg", "robots_disallowed"),
        ("/img/no-but-yes.jpg", "ok"),  # the longer Allow wins
        ("/img/anim.gif", "robots_disallowed"),  # "$": ends with .gif
        ("/img/pic.gif?size=2", "ok"),  # ... does not end with .gif
        ("/img/pic.gifv", "ok"),
        ("/img/deep/secret", "robots_disallowed"),  # "*" in the middle
        ("/img/deep/open", "ok"),
    ]
    many = [(f"/img/many{i}.jpg", "ok") for i in range(40)]
    urls = [f"{base}{path}" for path, _ in cases + many]
    result, manifest = run_rows(tmp_path, urls, fetch={"per_host": 8})

    assert [row["status"] for row in manifest] == [status for _, status in cases + many]
    assert fault_origin.hits["/robots.txt"] == 1
    for (path, status), row in zip(cases, manifest, strict=False):
        if status == "robots_disallowed":
            assert fault_origin.hits[path.split("?")[0]] == 0  # never requested
            assert "robots.txt" in row["error"] and row["http_status"] is None
    assert result["counts"]["robots_disallowed"] == 3


def test_robots_404_allows_everything(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    fault_origin, base = origin
    fault_origin.robots_status = 404
    _, manifest = run_rows(tmp_path, [f"{base}/img/a{i}.jpg" for i in range(5)])
    assert {row["status"] for row in manifest} == {"ok"}
    assert fault_origin.hits["/robots.txt"] == 1


def test_robots_500_disallows_the_host_and_is_counted(
    tmp_path: Path, origin: tuple[FaultOrigin, str]
) -> None:
    fault_origin, base = origin
    fault_origin.robots_status = 500
    before = metrics.ROBOTS_TXT.labels("unreachable")._value.get()
    result, manifest = run_rows(tmp_path, [f"{base}/img/a{i}.jpg" for i in range(5)])
    assert {row["status"] for row in manifest} == {"robots_disallowed"}
    assert result["counts"]["robots_disallowed"] == 5
    for row in manifest:
        assert "robots.txt unreachable (HTTP 500)" in row["error"], row
    assert fault_origin.hits["/robots.txt"] == 1
    assert not any(path.startswith("/img/") for path in fault_origin.hits)
    assert metrics.ROBOTS_TXT.labels("unreachable")._value.get() == before + 1


def test_robots_ignore_does_not_fetch_it(tmp_path: Path, origin: tuple[FaultOrigin, str]) -> None:
    fault_origin, base = origin
    fault_origin.robots_txt = "User-agent: *\nDisallow: /\n"
    _, manifest = run_rows(tmp_path, [f"{base}/img/a.jpg"], fetch={"robots": "ignore"})
    assert manifest[0]["status"] == "ok"
    assert fault_origin.hits["/robots.txt"] == 0
    # ... while obeyed, the same robots.txt disallows it
    (tmp_path / "again").mkdir()
    _, manifest = run_rows(tmp_path / "again", [f"{base}/img/a.jpg"])
    assert manifest[0]["status"] == "robots_disallowed"


def test_is_opted_out_reads_like_img2dataset() -> None:
    default = FetchOptions().disallowed_header_directives
    assert default == ("noai", "noimageai", "noindex", "noimageindex")
    assert is_opted_out(["noai"], default) == "noai"
    assert is_opted_out(["otherbot: noai"], default) is None
    assert is_opted_out(["otherbot: noai"], default, "OtherBot") == "otherbot: noai"
    assert is_opted_out(["noai"], ()) is None
    assert is_opted_out([], default) is None


def test_statuses_and_options_travel(tmp_path: Path) -> None:
    assert {Status.OPTED_OUT, Status.ROBOTS_DISALLOWED} <= set(FAILURES)
    spec = ShardSpec.from_dict(
        {
            "shard_id": "s",
            "input_path": "in",
            "output_dir": "out",
            "fetch": {
                "robots": "ignore",
                "disallowed_header_directives": ["NoAI", " noindex "],
                "user_agent_token": "https://example.org/contact",
            },
        }
    )
    again = ShardSpec.from_dict(spec.to_dict())
    assert again.fetch == spec.fetch
    assert spec.fetch.disallowed_header_directives == ("noai", "noindex")
    assert spec.fetch.agent_header == f"{USER_AGENT} (compatible; https://example.org/contact)"
    with pytest.raises(ValueError):
        FetchOptions(robots="maybe")


@pytest.mark.parametrize("command", ["submit", "demo"])
def test_cli_options(tmp_path: Path, command: str) -> None:
    base = [command, "--out", str(tmp_path / "o")] if command == "submit" else [command]
    if command == "submit":
        base.insert(1, str(tmp_path / "urls.parquet"))
    defaults = fetch_options(parse_args(base))
    assert defaults.robots == "obey"
    assert defaults.disallowed_header_directives == ("noai", "noimageai", "noindex", "noimageindex")
    assert defaults.user_agent_token is None
    given = fetch_options(
        parse_args(
            [
                *base,
                "--robots",
                "ignore",
                "--disallowed-header-directives",
                "",
                "--user-agent-token",
                "me@example.org",
            ]
        )
    )
    assert (given.robots, given.disallowed_header_directives, given.user_agent_token) == (
        "ignore",
        (),
        "me@example.org",
    )
