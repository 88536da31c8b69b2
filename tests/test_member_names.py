"""Member names stay inside the extraction folder, whatever the class and key text."""

from __future__ import annotations

import io
import random
import subprocess
import tarfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ldawt.daemon.packer import names
from ldawt.daemon.packer.directfile import STAGING_BYTES
from ldawt.daemon.packer.names import MAX_COMPONENT_BYTES, MemberNamer, safe_component
from ldawt.daemon.packer.tarwriter import HeaderTemplate, TarWriter

HOSTILE = [
    "../../etc",
    "/abs/path",
    "a\x00b",
    "tab\tand\nnewline\x7f",
    "x" * 500,
    "é" * 300,
    "..",
    ".",
    "",
    " ",
    "C:\\windows\\system32",
    "caf\u00e9",  # NFC
    "cafe\u0301",  # NFD of the same name
    "Bird",
    "bird",
]


def write_tar(path: Path, names: list[tuple[str, str]], layout: str = "class") -> list[str]:
    namer = MemberNamer(layout)
    writer = TarWriter(path, compress=False)
    members = []
    for class_name, key in names:
        member = f"{namer.stem(class_name, key)}.jpg"
        writer.add(member, b"\xff\xd8\xff" + member.encode())
        members.append(member)
    writer.commit()
    return members


def assert_inside(root: Path) -> None:
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve()), path


def test_hostile_names_extract_inside_the_target(tmp_path: Path) -> None:
    pairs = [(c, k) for c in HOSTILE for k in ("k", "../k", "/k")]
    members = write_tar(tmp_path / "s.tar", pairs)
    assert len(set(members)) == len(members)
    assert len({m.casefold() for m in members}) == len(members)

    with tarfile.open(tmp_path / "s.tar") as tar:
        tar.extractall(tmp_path / "py", filter="data")  # raises on any unsafe member
        assert [m.name for m in tar.getmembers()] == members
    (tmp_path / "gnu").mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "s.tar"), "-C", str(tmp_path / "gnu")], check=True)
    for root in (tmp_path / "py", tmp_path / "gnu"):
        assert_inside(root)
        assert len([p for p in root.rglob("*") if p.is_file()]) == len(members)


def test_unicode_forms_and_case_do_not_collide_silently() -> None:
    namer = MemberNamer("class")
    nfc = namer.stem("caf\u00e9", "k")
    nfd = namer.stem("cafe\u0301", "k")
    assert nfc == "caf\u00e9/k" and nfd == "caf\u00e9/k_1"
    assert namer.stem("Bird", "K") == "Bird/K" and namer.stem("bird", "k") == "bird/k_1"


def test_webdataset_stems_have_no_dots() -> None:
    namer = MemberNamer("webdataset")
    assert namer.stem("c", "a.b.c") == "a_b_c"
    assert namer.stem("c", "a_b_c") == "a_b_c_1"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_safe_component_is_one_bounded_printable_component(text: str) -> None:
    name = safe_component(text)
    assert name and name not in (".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name.encode("utf-8")) <= MAX_COMPONENT_BYTES
    assert all(unicodedata.category(ch) not in ("Cc", "Cs") for ch in name)
    assert name == unicodedata.normalize("NFC", name)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=260), st.booleans())
def test_plain_ascii_names_take_the_short_path_to_the_same_name(text: str, dots: bool) -> None:
    """The shortcut for printable ASCII names gives what the full cleaning gives."""
    assert safe_component(text, keep_dots=dots) == names._cleaned(text, dots)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=60), st.text(max_size=60)), min_size=1, max_size=20))
def test_any_names_make_a_safe_tar(tmp_path_factory, pairs: list[tuple[str, str]]) -> None:
    root = tmp_path_factory.mktemp("prop")
    members = write_tar(root / "s.tar", pairs)
    with tarfile.open(root / "s.tar") as tar:
        tar.extractall(root / "x", filter="data")
    assert_inside(root / "x")
    assert len({m.casefold() for m in members}) == len(pairs)


@pytest.mark.parametrize("compress", [False, True])
def test_writer_failure_leaves_no_partial(tmp_path: Path, compress: bool) -> None:
    writer = TarWriter(tmp_path / "s.tar", compress=compress)
    writer.add("ok.jpg", b"data")
    writer.add("bad.jpg", io.BytesIO(b"not bytes"))  # type: ignore[arg-type]
    try:
        writer.commit()
    except TypeError:
        pass
    else:
        raise AssertionError("commit must report the writer's failure")
    assert list(tmp_path.iterdir()) == []


def test_every_member_is_handed_back_after_a_write_failure(tmp_path: Path) -> None:
    """The bytes of members dropped after a failure go back to the fetcher's budget too: in a
    long-lived library process they would otherwise shrink it for good."""
    handed_back: list[str] = []
    writer = TarWriter(tmp_path / "s.tar", compress=False)
    for name, data in (("a.jpg", b"a"), ("bad.jpg", io.BytesIO(b"x")), ("c.jpg", b"c")):
        writer.add(name, data, lambda name=name: handed_back.append(name))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        writer.commit()
    assert handed_back == ["a.jpg", "bad.jpg", "c.jpg"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.sampled_from([0, 1, 511, 512, 113_000, 8**11 - 1, 8**11]))
def test_member_headers_are_tarfiles_own(name: str, size: int) -> None:
    """The header template writes exactly what ``TarInfo.tobuf`` writes (PAX format), for
    short ASCII names (the template) and every other name or size (tarfile itself)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 1_764_500_000, 0o644
    want = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert HeaderTemplate(1_764_500_000).header(name, size) == want


@pytest.mark.parametrize("compress", [False, True])
def test_members_across_the_staging_buffer(tmp_path: Path, compress: bool) -> None:
    """Members of several MiB in all (incompressible: the .tar.gz is as large), read back
    whole by tarfile."""
    rng = random.Random(3)
    members = {f"m{i}.jpg": rng.randbytes(rng.randrange(1, 700_000)) for i in range(30)}
    path = tmp_path / ("s.tar.gz" if compress else "s.tar")
    writer = TarWriter(path, compress=compress)
    for name, data in members.items():
        writer.add(name, data)
    writer.commit()
    assert path.stat().st_size > STAGING_BYTES
    with tarfile.open(path) as tar:
        read = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert read == members
