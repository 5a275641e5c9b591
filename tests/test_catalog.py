"""The agent catalog: its schema, its coverage of ai.robots.txt, user files and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_traffic.annotate import catalog as catalog_module
from agent_traffic.annotate.catalog import (
    CATEGORIES,
    CLOUDFLARE_CATEGORIES,
    KNOWN_AGENTS_TYPES,
    PURPOSES,
    SCRUNCH_TYPES,
    CatalogError,
    load_catalog,
)
from agent_traffic.annotate.classify import Classifier
from tests.conftest import REPO

# Optional real-world reference data, next to the repository (never required by the tests).
SHARED = Path(__file__).resolve().parents[2] / "shared"
ROBOTS_JSON = SHARED / "reference" / "ai-robots-txt.robots.json"


def _packaged() -> dict[str, Any]:
    text = resources.files("agent_traffic").joinpath("data/agents.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _schema() -> dict[str, Any]:
    text = resources.files("agent_traffic").joinpath("data/agents.schema.json").read_text("utf-8")
    return json.loads(text)


def _write(path: Path, doc: dict[str, Any] | str) -> Path:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(params=["jsonschema", "builtin"])
def validator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the jsonschema backend and with the built-in fallback."""
    if request.param == "jsonschema":
        pytest.importorskip("jsonschema")
    monkeypatch.setattr(catalog_module, "_FORCE_BUILTIN_VALIDATOR", request.param == "builtin")
    return request.param


# -- the packaged catalog ------------------------------------------------------------------------


def test_packaged_catalog_validates_against_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema, doc = _schema(), _packaged()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)
    complete = jsonschema.Draft202012Validator(
        {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/agent"}
    )
    for agent in doc["agents"]:
        complete.validate(agent)


def test_packaged_catalog_passes_either_validator(validator: str) -> None:
    """A task loads the packaged file without checking it (importing jsonschema costs 0.05 s):
    this is its check, with both backends."""
    schema = _schema()
    assert catalog_module._validator(schema, schema)(_packaged()) == []
    broken = _packaged()
    broken["agents"][0]["purpose"] = "mining"
    assert catalog_module._validator(schema, schema)(broken)


def test_packaged_catalog_loads_without_importing_jsonschema() -> None:
    code = ("import sys; from agent_traffic.annotate.catalog import load_catalog; load_catalog(); "
            "assert 'jsonschema' not in sys.modules, 'jsonschema imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_packaged_catalog_loads_with_either_validator(validator: str) -> None:
    catalog = load_catalog()
    assert len(catalog) > 250
    assert catalog.sources == ("agents.yaml",)
    assert {"openai", "anthropic", "google", "unknown", "none"} <= set(catalog.providers)
    assert catalog.providers["openai"].name == "OpenAI"
    assert all(a.provider in catalog.providers for a in catalog)


def test_schema_enums_match_the_code() -> None:
    defs = _schema()["$defs"]
    entry = defs["agentEntry"]["properties"]
    assert tuple(defs["category"]["enum"]) == CATEGORIES
    assert len(KNOWN_AGENTS_TYPES) == 16
    assert tuple(defs["purpose"]["enum"]) == PURPOSES
    assert tuple(entry["scrunch_type"]["enum"]) == SCRUNCH_TYPES
    assert tuple(entry["cloudflare_category"]["enum"]) == CLOUDFLARE_CATEGORIES


def test_packaged_names_and_tokens_are_unique() -> None:
    doc = _packaged()
    names = [a["name"].casefold() for a in doc["agents"]]
    assert len(names) == len(set(names))
    owner: dict[str, str] = {}
    for a in doc["agents"]:
        for tok in a["tokens"]:
            assert owner.setdefault(tok.casefold(), a["name"]) == a["name"], tok


@pytest.mark.parametrize(
    ("name", "category", "purpose", "scrunch", "cloudflare", "ai"),
    [
        ("GPTBot", "AI Data Scraper", "training", "training", "AI Crawler", True),
        ("OAI-SearchBot", "AI Search Crawler", "search_indexing", "indexer", "AI Search", True),
        ("ChatGPT-User", "AI Assistant", "user_retrieval", "retrieval", "AI Assistant", True),
        ("ClaudeBot", "AI Data Scraper", "training", "training", "AI Crawler", True),
        ("Claude-SearchBot", "AI Search Crawler", "search_indexing", "indexer", "AI Search", True),
        ("Claude-User", "AI Assistant", "user_retrieval", "retrieval", "AI Assistant", True),
        ("PerplexityBot", "AI Search Crawler", "search_indexing", "indexer", "AI Search", True),
        ("Perplexity-User", "AI Assistant", "user_retrieval", "retrieval", "AI Assistant", True),
        ("Amazonbot", "AI Data Scraper", "training", "training", "AI Crawler", True),
        ("Amzn-SearchBot", "AI Search Crawler", "search_indexing", "indexer", "AI Search", True),
        ("Bytespider", "AI Data Scraper", "training", "training", "AI Crawler", True),
        ("CCBot", "AI Data Scraper", "training", "training", "AI Crawler", True),
        ("meta-externalagent", "AI Data Scraper", "training", "training", "AI Crawler", True),
        ("meta-externalfetcher", "AI Assistant", "user_retrieval", "retrieval", "AI Assistant",
         True),
        ("DuckAssistBot", "AI Assistant", "user_retrieval", "retrieval", "AI Assistant", True),
        ("MistralAI-User", "AI Assistant", "user_retrieval", "retrieval", "AI Assistant", True),
        ("Applebot", "AI Search Crawler", "search_indexing", "indexer", "AI Search", True),
        ("Googlebot", "Search Engine Crawler", "none", None, None, False),
        ("bingbot", "Search Engine Crawler", "none", None, None, False),
        ("facebookexternalhit", "Fetcher", "none", None, None, False),
        ("curl", "Developer Helper", "none", None, None, False),
    ],
)
def test_key_agents_are_mapped(
    name: str, category: str, purpose: str, scrunch: str | None, cloudflare: str | None, ai: bool
) -> None:
    agent = load_catalog().get(name)
    assert agent is not None
    assert (agent.category, agent.purpose, agent.scrunch_type, agent.cloudflare_category,
            agent.ai) == (category, purpose, scrunch, cloudflare, ai)


def test_robots_only_tokens() -> None:
    catalog = load_catalog()
    robots_only = {a.name for a in catalog if a.robots_only}
    assert robots_only == {"Google-Extended", "Applebot-Extended"}


def test_case_and_version_duplicates_are_one_agent() -> None:
    catalog = load_catalog()
    for name, tokens in [
        ("meta-externalagent", {"meta-externalagent", "Meta-ExternalAgent"}),
        ("meta-externalfetcher", {"meta-externalfetcher", "Meta-ExternalFetcher"}),
        ("MistralAI-User", {"MistralAI-User", "MistralAI-User/1.0"}),
        ("iaskspider", {"iaskspider", "iaskspider/2.0"}),
        ("Brightbot", {"Brightbot", "Brightbot 1.0"}),
        ("TerraCotta", {"TerraCotta", "Terra Cotta"}),
        ("Panscient", {"Panscient", "panscient.com"}),
        ("QuillBot", {"QuillBot", "quillbot.com"}),
    ]:
        agent = catalog.get(name)
        assert agent is not None and tokens <= set(agent.tokens), name


# -- coverage of the ai.robots.txt list (optional reference data) ---------------------------------


def _robots_json() -> dict[str, Any]:
    if not ROBOTS_JSON.exists():
        pytest.skip(f"reference data not present: {ROBOTS_JSON}")
    return json.loads(ROBOTS_JSON.read_text("utf-8"))


def test_every_robots_json_token_is_in_the_catalog() -> None:
    robots = _robots_json()
    tokens = {t.casefold() for agent in load_catalog() for t in agent.tokens}
    missing = sorted(k for k in robots if k.casefold() not in tokens)
    assert not missing, f"ai.robots.txt tokens missing from agents.yaml: {missing}"


def test_robots_json_tokens_classify_to_their_agent() -> None:
    """Each listed token, written the usual way in a UA, lands on its own agent."""
    robots = _robots_json()
    catalog = load_catalog()
    clf = Classifier(catalog)
    owner = {t.casefold(): a for a in catalog for t in a.tokens}
    wrong = []
    for token in robots:
        agent = owner[token.casefold()]
        got = clf.classify(f"Mozilla/5.0 (compatible; {token}; +https://example.com/bot)").agent
        if agent.robots_only:
            ok = got != agent.name
        elif agent.pattern:
            continue  # generic words match only their documented form (see test_classify)
        else:
            ok = got == agent.name
        if not ok:
            wrong.append((token, got))
    assert not wrong


# -- user files ---------------------------------------------------------------------------------


def test_user_file_adds_overrides_and_disables(tmp_path: Path) -> None:
    user = _write(
        tmp_path / "mine.yaml",
        {
            "version": 1,
            "providers": {"acme": {"name": "ACME Corp", "url": "https://acme.example"}},
            "agents": [
                {"name": "AcmeBot", "tokens": ["AcmeBot"], "provider": "acme",
                 "category": "AI Data Scraper", "purpose": "training", "ai": True,
                 "scrunch_type": "training"},
                {"name": "GPTBot", "priority": 50, "docs": "https://example.com/gptbot"},
                {"name": "curl", "disabled": True},
            ],
        },
    )
    base = load_catalog()
    catalog = load_catalog([user])
    assert catalog.sources == ("agents.yaml", str(user))
    assert catalog.providers["acme"].name == "ACME Corp"
    acme = catalog.get("AcmeBot")
    assert acme is not None and acme.source == str(user) and acme.priority == 0
    gpt = catalog.get("GPTBot")
    assert gpt is not None and gpt.priority == 50 and gpt.docs == "https://example.com/gptbot"
    assert gpt.purpose == "training" and gpt.tokens == ("GPTBot",)  # untouched fields kept
    # An override keeps the agent's place in catalog order; additions go last.
    names = [a.name for a in catalog]
    assert names.index("GPTBot") == [a.name for a in base].index("GPTBot")
    assert names[-1] == "AcmeBot"
    assert catalog.get("curl") is None and "curl" in catalog.disabled
    clf = Classifier(catalog)
    assert clf.classify("AcmeBot/2.0 (+https://acme.example)").provider == "acme"
    assert clf.classify("curl/8.5.0").agent == "unknown"


def test_user_files_apply_in_order(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.yaml", {"version": 1, "agents": [
        {"name": "Applebot", "category": "Search Engine Crawler", "purpose": "none",
         "ai": False, "scrunch_type": None, "cloudflare_category": None}]})
    second = _write(tmp_path / "b.yaml", {"version": 1, "agents": [
        {"name": "Applebot", "category": "Fetcher"}]})
    applebot = load_catalog([first, second]).get("Applebot")
    assert applebot is not None
    assert (applebot.category, applebot.purpose, applebot.ai) == ("Fetcher", "none", False)
    assert applebot.source == str(second)


def test_a_disabled_agent_can_be_added_back(tmp_path: Path) -> None:
    off = _write(tmp_path / "off.yaml", {"version": 1, "agents": [
        {"name": "Wget", "disabled": True}]})
    back = _write(tmp_path / "back.yaml", {"version": 1, "agents": [
        {"name": "Wget", "tokens": ["Wget"], "provider": "unknown", "category": "Scraper",
         "purpose": "none", "ai": False}]})
    catalog = load_catalog([off, back])
    wget = catalog.get("Wget")
    assert wget is not None and wget.category == "Scraper" and "Wget" not in catalog.disabled


# -- errors name the file, the agent and the field ------------------------------------------------


def _error(tmp_path: Path, doc: dict[str, Any] | str, name: str = "bad.yaml") -> str:
    path = _write(tmp_path / name, doc)
    with pytest.raises(CatalogError) as info:
        load_catalog([path])
    return str(info.value)


def test_bad_enum_value_names_file_agent_and_field(tmp_path: Path, validator: str) -> None:
    msg = _error(tmp_path, {"version": 1, "agents": [
        {"name": "ClaudeBot", "category": "AI Data Scraper"},
        {"name": "GPTBot", "purpose": "trainig"}]})
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}: agents[1] (GPTBot).purpose: ")
    assert "'trainig' is not one of ['training', 'search_indexing'" in msg


def test_new_agent_missing_fields(tmp_path: Path, validator: str) -> None:
    msg = _error(tmp_path, {"version": 1, "agents": [
        {"name": "NewBot", "tokens": ["NewBot"], "provider": "unknown", "ai": True}]})
    assert "bad.yaml: agents[0] (NewBot).category: required field is missing" in msg
    assert "bad.yaml: agents[0] (NewBot).purpose: required field is missing" in msg


def test_unknown_field_is_rejected(tmp_path: Path, validator: str) -> None:
    msg = _error(tmp_path, {"version": 1, "agents": [{"name": "GPTBot", "purpse": "training"}]})
    assert "bad.yaml: agents[0] (GPTBot).purpse: unknown field (allowed: ai, category" in msg


def test_wrong_type_and_version(tmp_path: Path, validator: str) -> None:
    msg = _error(tmp_path, {"version": 2, "agents": [{"name": "GPTBot", "ai": "yes please"}]})
    assert "bad.yaml: agents[0] (GPTBot).ai: 'yes please' is not of type 'boolean'" in msg
    assert "bad.yaml: version: 1 was expected" in msg


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "GPTBot", "provider": "openia"},
         "agents[0] (GPTBot).provider: 'openia' is not a provider slug"),
        ({"name": "GPTBot", "pattern": "GPT(Bot"},
         "agents[0] (GPTBot).pattern: 'GPT(Bot' is not a valid regular expression"),
        ({"name": "GPTBot", "pattern": "(?P<x>GPTBot)"},
         "agents[0] (GPTBot).pattern: '(?P<x>GPTBot)': named groups"),
        ({"name": "GPTBot", "tokens": ["ClaudeBot"]},
         "agents[0] (GPTBot).tokens: 'ClaudeBot' already belongs to 'ClaudeBot' (agents.yaml: "),
        ({"name": "GPTBot", "ai": False},
         "agents[0] (GPTBot).purpose: 'training' needs ai: true"),
        ({"name": "GPTBot", "tokens": []},
         "agents[0] (GPTBot).tokens: list at least one token, or give a pattern"),
        ({"name": "human", "tokens": ["Human"], "provider": "none", "category": "Browser",
          "purpose": "none", "ai": False},
         "agents[0] (human).name: 'human' is reserved"),
        ({"name": "NoSuchBot", "disabled": True},
         "agents[0] (NoSuchBot).disabled: no agent named 'NoSuchBot' to disable"),
    ],
)
def test_semantic_errors_name_the_field(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    msg = _error(tmp_path, {"version": 1, "agents": [entry]})
    assert f"bad.yaml: {expected}" in msg


def test_duplicate_name_in_one_file(tmp_path: Path) -> None:
    msg = _error(tmp_path, {"version": 1, "agents": [{"name": "GPTBot"}, {"name": "gptbot"}]})
    assert "bad.yaml: agents[1] (gptbot).name: duplicate of agents[0]" in msg


def test_bad_provider_slug(tmp_path: Path, validator: str) -> None:
    msg = _error(tmp_path, {"version": 1, "providers": {"Bad Slug": {"name": "X"}}})
    assert "bad.yaml: providers: 'Bad Slug' does not match" in msg


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    assert "bad.yaml: invalid YAML" in _error(tmp_path, "agents: [unclosed\n")
    assert "bad.yaml: the top level must be a mapping" in _error(tmp_path, "- just a list\n")
    with pytest.raises(CatalogError, match="missing.yaml: cannot read"):
        load_catalog([tmp_path / "missing.yaml"])


# -- IP-range lists and the referrer table ------------------------------------------------------


def test_range_lists_and_referrers_are_catalog_data(tmp_path: Path) -> None:
    catalog = load_catalog()
    gptbot = catalog.get("GPTBot")
    assert gptbot is not None and gptbot.ip_ranges == ("openai-gptbot",)
    assert catalog.ip_ranges["openai-gptbot"].url == "https://openai.com/gptbot.json"
    assert catalog.ip_ranges["openai-gptbot"].complete is True
    assert {catalog.get(n).ip_ranges for n in ("ClaudeBot", "Claude-User", "Claude-SearchBot")} == {
        ("anthropic-bots",)}
    assert catalog.get("Google-Extended").ip_ranges == ()  # robots-only: nothing to verify
    assert catalog.referrers["openai"][0] == "chatgpt.com"

    user = _write(tmp_path / "mine.yaml", {
        "version": 1,
        "providers": {"acme": {"name": "ACME"}},
        "ip_ranges": {
            "openai-gptbot": {"url": "https://mirror.example/gptbot.json"},  # override one field
            "commoncrawl-ccbot": {"disabled": True},
            "acme-bots": {"url": "https://acme.example/bots.json", "provider": "acme", "complete": False},
        },
        "referrers": {"acme": ["assistant.acme.example"], "openai": ["chatgpt.com"]},
        "agents": [{"name": "AcmeBot", "tokens": ["AcmeBot"], "provider": "acme", "category": "AI Assistant",
                    "purpose": "user_retrieval", "ai": True, "ip_ranges": ["acme-bots"]}],
    })
    merged = load_catalog([user])
    assert merged.ip_ranges["openai-gptbot"].url == "https://mirror.example/gptbot.json"
    assert merged.ip_ranges["openai-gptbot"].provider == "openai"
    assert "commoncrawl-ccbot" not in merged.ip_ranges and merged.get("CCBot").ip_ranges == ()
    assert merged.ip_ranges["acme-bots"].complete is False and merged.get("AcmeBot").ip_ranges == ("acme-bots",)
    assert merged.referrers["acme"] == ("assistant.acme.example",)
    assert merged.referrers["openai"] == ("chatgpt.com",)  # a file's list replaces the earlier one


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"agents": [{"name": "GPTBot", "ip_ranges": ["openai-gtpbot"]}]},
         "agents[0] (GPTBot).ip_ranges: 'openai-gtpbot' is not an ip_ranges id"),
        ({"agents": [{"name": "Google-Extended", "ip_ranges": ["google-common-crawlers"]}]},
         "agents[0] (Google-Extended).ip_ranges: a robots-only token never sends requests"),
        ({"ip_ranges": {"x-bots": {"url": "https://x.example/b.json"}}},
         "ip_ranges.x-bots.provider: required field is missing"),
        ({"ip_ranges": {"x-bots": {"url": "https://x.example/b.json", "provider": "nobody"}}},
         "ip_ranges.x-bots.provider: 'nobody' is not a provider slug"),
        ({"referrers": {"anthropic": ["chatgpt.com"]}},
         "referrers.anthropic: 'chatgpt.com' already belongs to 'openai'"),
        ({"referrers": {"nobody": ["x.example"]}}, "referrers.nobody: 'nobody' is not a provider slug"),
    ],
)
def test_range_and_referrer_errors_name_the_field(tmp_path: Path, doc: dict[str, Any], expected: str) -> None:
    assert f"bad.yaml: {expected}" in _error(tmp_path, {"version": 1, **doc})


def test_range_and_referrer_shapes_are_schema_checked(tmp_path: Path, validator: str) -> None:
    msg = _error(tmp_path, {"version": 1, "referrers": {"openai": ["ChatGPT.com"]}})
    assert "bad.yaml: referrers.openai[0]: 'ChatGPT.com' does not match" in msg
    msg = _error(tmp_path, {"version": 1, "ip_ranges": {"openai-gptbot": {"url": "ftp://x"}}})
    assert "bad.yaml: ip_ranges.openai-gptbot.url: 'ftp://x' does not match" in msg
    msg = _error(tmp_path, {"version": 1, "ip_ranges": {"openai-gptbot": {"uri": "https://x"}}})
    assert "bad.yaml: ip_ranges.openai-gptbot.uri: unknown field" in msg
