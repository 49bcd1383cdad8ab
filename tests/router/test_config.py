"""The routes file: the documented example loads, and each kind of mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.spec.routes import ConfigError, load_config, load_config_text, parse_config

EXAMPLE = Path(__file__).parents[2] / "examples" / "routes.yaml"


def test_example_config_loads():
    config = load_config(EXAMPLE)
    iris = config.services[0]
    assert iris.name == "iris"
    assert [(v.name, v.weight) for v in iris.variants] == [("default", 90), ("canary", 10),
                                                            ("shadow", 0)]
    assert iris.rules[0].header == {"x-experiment": "b"} and iris.rules[0].variant == "canary"
    assert iris.sticky is not None and iris.sticky.header == "x-user-id"
    assert iris.mirror[0].variant == "shadow" and iris.mirror[0].percent == 100
    assert config.graphs[0].nodes["root"].steps[0].dependency == "Hard"


def variant(name="default", **kw):
    return {"name": name, "weight": 1, "http": ["http://127.0.0.1:1"], **kw}


def service(**kw):
    return {"name": "m", "variants": [variant()], **kw}


@pytest.mark.parametrize("doc,message", [
    ({"services": [service(variants=[])]}, "services.0.variants"),
    ({"services": [service(variants=[variant(weight=-1)])]}, "greater than or equal to 0"),
    ({"services": [service(variants=[variant(weight=0)])]}, "weights must add up"),
    ({"services": [service(variants=[variant(), variant()])]}, "variant names repeat"),
    ({"services": [service(variants=[variant(http=["localhost:80"])])]}, "http://host:port"),
    ({"services": [service(variants=[variant(http=[], grpc=["nohost"])])]}, "host:port"),
    ({"services": [service(variants=[variant(http=[])])]}, "at least one http or grpc"),
    ({"services": [service(variants=[variant(wieght=3)])]}, "wieght"),
    ({"services": [service(rules=[{"header": {"a": "b"}, "variant": "nope"}])]}, "unknown variant"),
    ({"services": [service(rules=[{"variant": "default"}])]}, "needs a header or cookie"),
    ({"services": [service(sticky={})]}, "exactly one of header or cookie"),
    ({"services": [service(mirror={"variant": "ghost"})]}, "mirror names unknown variant"),
    ({"services": [service(mirror={"variant": "default", "percent": 101})]}, "less than or equal"),
    ({"services": [service(), service()]}, "service names repeat"),
    ({"services": [service()], "graphs": [{"name": "g", "nodes": {
        "first": {"routerType": "Sequence", "steps": [{"serviceName": "m"}]}}}]}, "named 'root'"),
    ({"services": [service()], "graphs": [{"name": "g", "nodes": {
        "root": {"routerType": "Sequence", "steps": [{"serviceName": "x"}]}}}]},
     "unknown service 'x'"),
    ({"services": [service()], "graphs": [{"name": "g", "nodes": {
        "root": {"routerType": "Sequence", "steps": [{"nodeName": "root"}]}}}]}, "cycle"),
    ({"services": [service()], "graphs": [{"name": "g", "nodes": {
        "root": {"routerType": "Splitter", "steps": [{"serviceName": "m"}]}}}]}, "weight"),
    ({"services": [service()], "graphs": [{"name": "m", "nodes": {
        "root": {"routerType": "Sequence", "steps": [{"serviceName": "m"}]}}}]},
     "differ from services"),
    ({"services": [service()], "graphs": [{"name": "g", "nodes": {
        "root": {"routerType": "Switch", "steps": [
            {"serviceName": "m", "stepName": "a", "condition": "#(a"},
            {"serviceName": "m"}]}}}]}, "unbalanced"),
    ({"upstream": {"max_pending": 0}}, "upstream.max_pending"),
    ({"services": [service(variants=[variant(http=[])])]}, "services.0.variants.0: variant "
     "'default' of service 'm' needs at least one http or grpc endpoint; a variant without "
     "endpoints is allowed only where the service holds requests (upstream.hold_seconds > 0)"),
    # the service's own upstream replaces the top level's: it does not hold
    ({"upstream": {"hold_seconds": 5}, "services": [
        service(), service(name="n", variants=[variant(), variant("cold", http=[])],
                           upstream={"timeout_seconds": 3})]},
     "services.1.variants.1: variant 'cold' of service 'n' needs at least one"),
    ({"upstream": {"hold_seconds": -1}}, "upstream.hold_seconds"),
    ({"upstream": {"max_held": 0}}, "upstream.max_held"),
    ({"upstream": {"hold_seconds": "soon"}}, "upstream.hold_seconds"),
])
def test_invalid_configs_name_the_problem(doc, message):
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert message in str(info.value)


def test_yaml_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_text("services: [")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config_text("- a")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_defaults_and_normalisation():
    config = parse_config({"services": [service(
        variants=[variant(http=["http://127.0.0.1:1/"])],
        rules=[{"header": {"X-Exp": "b"}, "variant": "default"}], sticky={"header": "X-User"})]})
    m = config.services[0]
    assert m.variants[0].http == ["http://127.0.0.1:1"]
    assert m.rules[0].header == {"x-exp": "b"} and m.sticky.header == "x-user"
    assert config.upstream_for(m).max_attempts == 3


def test_holding_is_off_unless_the_routes_turn_it_on():
    """A routes file without the hold fields behaves as before: no request is held."""
    for config in (load_config(EXAMPLE), parse_config({"services": [service()]})):
        for svc in config.services:
            upstream = config.upstream_for(svc)
            assert upstream.hold_seconds == 0 and upstream.max_held == 256
    assert "hold_seconds" not in load_config(EXAMPLE).model_dump(exclude_defaults=True).get(
        "upstream", {})


def test_variants_without_endpoints_where_the_service_holds():
    empty = variant("cold", http=[])
    top = parse_config({"upstream": {"hold_seconds": 30, "max_held": 8},
                        "services": [service(variants=[variant(), empty])]})
    m = top.services[0]
    assert m.variants[1].empty and not m.variants[0].empty
    assert (top.upstream_for(m).hold_seconds, top.upstream_for(m).max_held) == (30, 8)
    own = parse_config({"services": [service(variants=[empty | {"weight": 1}],
                                             upstream={"hold_seconds": 0.5})]})
    assert own.upstream_for(own.services[0]).hold_seconds == 0.5
    assert own.services[0].variants[0].http == [] and own.services[0].variants[0].grpc == []
