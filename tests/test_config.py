"""The config is validated on load, and a mistake names the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent_traffic.config import load_config
from agent_traffic.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

GOOD = {
    "version": 1,
    "staging": "staging",
    "sources": [{"name": "web", "url": "logs/{date:%Y/%m/%d}/*.gz", "site": "example.com"}],
    "sites": [
        {
            "name": "example.com",
            "destinations": [
                {"name": "scrunch-example", "vendor": "scrunch", "site_id": "01JDEM0SANDB0X0000000000AA",
                 "secret": {"env": "KEY"}}
            ],
        }
    ],
}


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("demo.yaml", "example.yaml"):
        cfg = load_config(REPO / "config" / name)
        assert cfg.sites and cfg.sources


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.staging == f"file://{tmp_path / 'staging'}"
    assert cfg.sources[0].url == f"file://{tmp_path}/logs/{{date:%Y/%m/%d}}/*.gz"
    d = cfg.sites[0].destinations[0]
    assert d.select == "ai" and d.endpoint_base == "https://webhooks.scrunchai.com"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["sites"][0]["destinations"][0].update(vendor="scrunchh"),
         "sites[0].destinations[0].vendor: Input should be 'scrunch'"),
        (lambda c: c["sites"][0]["destinations"][0].update(select="humans"),
         "sites[0].destinations[0].select"),
        (lambda c: c["sites"][0]["destinations"][0].update(secret={}),
         "sites[0].destinations[0].secret: give `env`"),
        (lambda c: c["sources"][0].update(url="logs/*.gz"), "sources[0].url: must contain a {date"),
        (lambda c: c["sources"][0].update(site="nope.com"), "sources[0].site: 'nope.com' is not one of"),
        (lambda c: c["sources"][0].update(site="exmaple.com"), "(did you mean 'example.com'?)"),
        (lambda c: c["sources"][0].update(trusted_proxies=["10.0.0.0/33"]),
         "sources[0].trusted_proxies: '10.0.0.0/33' is not a network"),
        (lambda c: c["sources"][0].update(format="combined", trusted_proxies=["10.0.0.0/8"]),
         "sources[0].trusted_proxies: format 'combined' has no X-Forwarded-For field"),
        (lambda c: c["sources"].append(dict(c["sources"][0], name="web-again")),
         "sources[1].url: the same as sources[0].url, so each object there would be parsed twice"),
        (lambda c: c["sources"][0].update(format="nginx_combind"),
         "\n  - sources[0].format: 'nginx_combind' is not a known format (did you mean 'nginx_combined'?); use auto"),
        (lambda c: c.pop("staging"), "staging: Field required"),
        (lambda c: c.update(stagin="x"), "stagin: Extra inputs are not permitted"),
        (lambda c: c["sites"][0]["destinations"][0].update(max_batch_bytes=2_000_000),
         "max_batch_bytes: Input should be less than or equal to 1000000"),
    ],
)
def test_a_mistake_names_the_field(tmp_path: Path, mutate, expected: str) -> None:
    import copy

    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, data))
    assert expected in str(exc.value)
    assert str(tmp_path / "c.yaml") in str(exc.value)


def test_environment_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {**GOOD, "staging": "${STAGE_ROOT:-fallback}"}
    monkeypatch.setenv("STAGE_ROOT", "s3://bucket/staging")
    assert load_config(write(tmp_path, data)).staging == "s3://bucket/staging"
    monkeypatch.delenv("STAGE_ROOT")
    assert load_config(write(tmp_path, data)).staging.endswith("/fallback")
    with pytest.raises(ConfigError, match=r"\$\{NOPE\} is not set"):
        load_config(write(tmp_path, {**GOOD, "staging": "${NOPE}"}))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("sites: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_a_site_whose_only_destination_is_wrong_is_one_problem_not_two(tmp_path: Path) -> None:
    """The site list is not also 'too short' because its one site failed: the user sees only the
    mistake they made."""
    import copy

    data = copy.deepcopy(GOOD)
    data["sites"][0]["destinatons"] = data["sites"][0].pop("destinations")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, data))
    assert str(exc.value).splitlines()[1:] == ["  - sites[0].destinatons: Extra inputs are not permitted"]
    assert "(1 problem(s))" in str(exc.value)
    data["sites"] = []  # an empty list on its own still says so
    with pytest.raises(ConfigError, match="sites: Tuple should have at least 1 item"):
        load_config(write(tmp_path, data))
