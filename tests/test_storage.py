"""The staging store on local disk and on S3, GCS and Azure protocol servers (moto, fake-gcs-server,
Azurite): atomic writes, listing, object versions, the atomic create leases rely on."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent_traffic.ingest.storage import Store, StoreOptions, filesystem, list_objects
from tests.conftest import make_bucket, object_store_server, put_object, write_config


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


def test_a_missing_bucket_is_an_error_not_a_quiet_day(s3_env: str) -> None:
    """An empty date folder is a quiet day; a bucket that is gone (or hidden by the credentials)
    would pass for one every night."""
    from agent_traffic.errors import StoreUnavailable

    opts = StoreOptions(endpoint_url=s3_env, key="testing", secret="testing")
    for url in ("s3://no-such-bucket/logs/2026/11/21/", "s3://no-such-bucket/logs/*.gz"):
        with pytest.raises(StoreUnavailable, match="bucket s3://no-such-bucket does not exist"):
            list_objects(url, opts)


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
    from agent_traffic.delivery.ledger import AckSync

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
    import agent_traffic.ingest.storage as storage

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


def test_listing_globs_prefixes_and_versions_on_each_store(object_store) -> None:
    """Every object store lists globs and prefixes alike, and gives each object its store's version
    (S3 / Azure ETag, GCS generation), which changes when the object is rewritten."""
    from agent_traffic.ingest.discover import object_id, version_tag

    s = object_store.scheme
    object_store.make_bucket("listing-each")
    for key in ("logs/2026/11/21/a.gz", "logs/2026/11/21/b.gz", "logs/2026/11/22/c.gz", "logs/2026/11/21/.hidden"):
        object_store.put("listing-each", key, b"x" * 3)
    got = list_objects(f"{s}://listing-each/logs/2026/11/21/*.gz", object_store.options)
    assert [o.url for o in got] == [f"{s}://listing-each/logs/2026/11/21/a.gz", f"{s}://listing-each/logs/2026/11/21/b.gz"]
    assert all(o.size == 3 and o.version and o.mtime for o in got)
    assert len(list_objects(f"{s}://listing-each/logs/2026/", object_store.options)) == 3
    assert list_objects(f"{s}://listing-each/nothing/here/", object_store.options) == []
    fs, path = filesystem(f"{s}://listing-each/logs/2026/11/21/a.gz", object_store.options)
    native = fs.info(path)
    assert got[0].version == str(native.get("generation") or native.get("ETag") or native.get("etag")).strip('"')
    before = got[0]
    object_store.put("listing-each", "logs/2026/11/21/a.gz", b"yyyy")  # rewritten: a new version
    after = list_objects(f"{s}://listing-each/logs/2026/11/21/a.gz", object_store.options)[0]
    assert after.version != before.version
    assert object_id(after.url, version_tag(after)) != object_id(before.url, version_tag(before))


def test_airflow_connections_map_to_each_store() -> None:
    from agent_traffic.errors import ConfigError
    from agent_traffic.ingest.storage import GcsOptions

    base = StoreOptions(endpoint_url="http://minio:9000", gcs=GcsOptions(project="cfg-project"))
    aws = base.with_connection("aws", "AKID", "s3cret", {"region_name": "auto"})
    assert (aws.key, aws.secret, aws.endpoint_url, aws.region) == ("AKID", "s3cret", "http://minio:9000", "auto")
    key = {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nabc"}
    gcp = base.with_connection("google_cloud_platform", None, None,
                               {"keyfile_dict": json.dumps(key), "project": "logs-project"})
    assert gcp.gcs.token == key and gcp.gcs.project == "logs-project"
    old_style = base.with_connection("google_cloud_platform", None, None,
                                     {"extra__google_cloud_platform__key_path": "/keys/sa.json"})
    assert old_style.gcs.token == "/keys/sa.json" and old_style.gcs.project == "cfg-project"
    assert base.with_connection("google_cloud_platform", None, None, {}).gcs.token is None  # ADC
    wasb = base.with_connection("wasb", "mylogs", "acc0untkey", {})
    assert (wasb.azure.account_name, wasb.azure.account_key) == ("mylogs", "acc0untkey")
    sp = base.with_connection("adls", "client-id", "client-secret", {"tenant_id": "t1", "account_name": "mylogs"})
    assert (sp.azure.client_id, sp.azure.client_secret, sp.azure.tenant_id, sp.azure.account_name) == (
        "client-id", "client-secret", "t1", "mylogs")
    sas = base.with_connection("wasb", "mylogs", None, {"sas_token": "sv=2025&sig=abc"})
    assert sas.azure.sas_token == "sv=2025&sig=abc" and sas.azure.account_key is None
    for opts in (aws, gcp, wasb, sp, sas):  # secrets never in repr (logs, exceptions)
        assert not any(s in repr(opts) for s in ("s3cret", "PRIVATE", "acc0untkey", "client-secret", "sig=abc"))
    with pytest.raises(ConfigError, match="google_cloud_platform"):
        base.with_connection("generic", "a", "b", {})
    with pytest.raises(ConfigError, match="not JSON") as bad:
        base.with_connection("google_cloud_platform", None, None, {"keyfile_dict": "{'private_key': 'k3y'"})
    assert "k3y" not in str(bad.value)


def test_a_wasb_connection_reaches_azure_blob_storage(azurite: str) -> None:
    """A wasb Connection holding a connection string (as Airflow's Azure hook reads it) opens the store."""
    opts = StoreOptions().with_connection("wasb", None, None, {"connection_string": azurite})
    fs, _ = filesystem("az://conn-test", opts)
    if not fs.exists("conn-test"):
        fs.mkdir("conn-test")
    store = Store("az://conn-test/staging", opts)
    assert store.create_json("leases/a.json", {"n": 1}) and not store.create_json("leases/a.json", {"n": 2})
    assert store.get_json("leases/a.json") == {"n": 1}


def test_config_names_each_store_and_its_connection(tmp_path: Path) -> None:
    from agent_traffic.config import load_config

    cfg_path = write_config(tmp_path / "c.yaml", staging="gs://stg/x", source_url="az://logs/{date:%Y}/",
                            base_url="http://127.0.0.1:9",
                            object_store={"airflow_conn_id": "r2", "gcs": {"project": "p", "airflow_conn_id": "gcp"},
                                          "azure": {"account_name": "acct", "airflow_conn_id": "blob"}})
    cfg = load_config(str(cfg_path))
    assert cfg.staging == "gs://stg/x" and cfg.sources[0].url == "az://logs/{date:%Y}/"
    assert cfg.object_store.airflow_conn_ids == ("r2", "gcp", "blob")
    opts = StoreOptions.from_config(cfg.object_store, env={})
    assert opts.gcs.project == "p" and opts.azure.account_name == "acct" and opts.gcs.token is None
