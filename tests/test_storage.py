"""The staging store on local disk and on S3, GCS and Azure protocol servers (moto, fake-gcs-server,
Azurite): atomic writes, listing, object versions, the atomic create leases rely on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent_traffic.storage import Store, StoreOptions, list_objects
from tests.conftest import make_bucket, object_store_server, put_object


@pytest.fixture(params=["local", "s3", "gs", "az"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "staging"))
    server = object_store_server(request, request.param)
    server.make_bucket("store-tests")
    return Store(f"{server.scheme}://store-tests/{tmp_path.name}", server.options)


def test_put_get_list_delete(store: Store) -> None:
    store.put_json("a/b/one.json", {"x": 1})
    store.put_bytes("a/two.bin", b"\x00\x01")
    assert store.get_json("a/b/one.json") == {"x": 1}
    assert store.list("a/") == ["a/b/one.json", "a/two.bin"]
    assert store.get_json_or_none("a/missing.json") is None
    store.delete("a/two.bin")
    store.delete("a/two.bin")  # deleting twice is fine
    assert store.list("a/") == ["a/b/one.json"]


def test_create_exclusive_has_one_winner(store: Store) -> None:
    assert store.create_exclusive("leases/x.0", b"first")
    assert not store.create_exclusive("leases/x.0", b"second")
    assert store.get_bytes("leases/x.0") == b"first"
    wins: list[int] = []

    def race(i: int) -> None:
        if store.create_exclusive("leases/y.0", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.get_bytes("leases/y.0") == str(wins[0]).encode()


def test_list_objects_glob_and_prefix(s3_env: str, tmp_path: Path) -> None:
    make_bucket(s3_env, "listing")
    for key in ("logs/2026/11/21/a.gz", "logs/2026/11/21/b.gz", "logs/2026/11/22/c.gz"):
        put_object(s3_env, "listing", key, b"x" * 3)
    opts = StoreOptions(endpoint_url=s3_env, key="testing", secret="testing")
    got = list_objects("s3://listing/logs/2026/11/21/*.gz", opts)
    assert [o.url for o in got] == ["s3://listing/logs/2026/11/21/a.gz", "s3://listing/logs/2026/11/21/b.gz"]
    assert all(o.size == 3 and o.etag for o in got)
    assert len(list_objects("s3://listing/logs/2026/", opts)) == 3
    assert list_objects("s3://listing/nothing/here/", opts) == []
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.log").write_text("1")
    (tmp_path / "d" / ".hidden").write_text("1")
    local = list_objects(str(tmp_path / "d") + "/", None)
    assert [Path(o.url.removeprefix("file://")).name for o in local] == ["x.log"] and local[0].mtime


class _CountingStore(Store):
    """The real local store, recording which keys were made durable together."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.synced: list[list[str]] = []

    def sync(self, keys) -> None:
        keys = list(keys)
        self.synced.append(keys)
        super().sync(keys)


def test_acks_are_made_durable_together(tmp_path: Path) -> None:
    """A group commit: acks land at once (a killed process loses none), one sync covers many."""
    from agent_traffic.deliver import AckSync

    store = _CountingStore(str(tmp_path / "st"))
    acks = AckSync(store, interval_s=3600)
    for i in range(5):
        acks.put(f"acks/{i}.json", {"i": i})
        assert store.get_json(f"acks/{i}.json") == {"i": i}  # readable at once by other workers
    assert store.synced == []
    acks.flush()
    acks.flush()  # nothing new: no second sync
    assert store.synced == [[f"acks/{i}.json" for i in range(5)]]
    every_time = AckSync(store, interval_s=0)
    every_time.put("acks/x.json", {})
    assert store.synced[-1] == ["acks/x.json"]


def test_sync_without_syncfs_fsyncs_each_file_and_skips_removed_ones(tmp_path: Path, monkeypatch) -> None:
    import agent_traffic.storage as storage

    monkeypatch.setattr(storage, "_LIBC", None)  # as on macOS: no syncfs
    store = Store(str(tmp_path / "st"))
    store.put_bytes("a/b.json", b"{}", durable=False)
    store.sync(["a/b.json", "a/gone.json"])
    assert store.get_bytes("a/b.json") == b"{}"


# a discarded S3 upload must not try to upload again when the file object is collected
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_put_stream_writes_parts_whole_and_get_range_reads_a_slice(store: Store) -> None:
    parts = [bytes([i]) * (300_000 + i) for i in range(20)]  # 6 MB: more than one S3 multipart part
    assert store.put_stream("p/pack", iter(parts), durable=False) == sum(map(len, parts))
    data = b"".join(parts)
    assert store.get_bytes("p/pack") == data
    assert store.get_range("p/pack", 300_000, 600_005) == data[300_000:600_005]

    def failing():
        yield b"half"
        raise RuntimeError("serializer failed")

    with pytest.raises(RuntimeError):
        store.put_stream("p/broken", failing())
    assert store.list("p/") == ["p/pack"]  # a failed stream leaves nothing behind
