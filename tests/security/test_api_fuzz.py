"""The real API fuzzed against its own OpenAPI document (schemathesis + Hypothesis), valid and
invalid requests mixed: not one answer is 5xx, every answer is one the document describes (status,
media type, body schema), and the service still answers /livez afterwards.
Twice: with a token (sent, as a client would) and with none on a loopback bind.

Bounded: a fixed number of examples per service (about a minute each on a loaded 2-core machine),
derandomized so a failure is reproducible; serve.max_streams keeps what the fuzzer adds small.
"""

from __future__ import annotations

from collections import Counter

import pytest

from service_process import TOKEN, ServeProcess

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402

EXAMPLES = 250
ACCURACY = [schemathesis.checks.status_code_conformance, schemathesis.checks.content_type_conformance,
            schemathesis.checks.response_schema_conformance]


def fuzz(service: ServeProcess) -> Counter:
    """Run EXAMPLES generated requests against `service`; returns how many got each status."""
    headers = {"Authorization": f"Bearer {service.token}"} if service.token else {}
    answer = service.request("GET", "/openapi.json")
    assert answer.status == 200, answer
    schema = schemathesis.openapi.from_dict(answer.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /streams", "POST /streams", "GET /streams/{stream_id}",
                                                "DELETE /streams/{stream_id}", "GET /metrics", "GET /livez", "GET /readyz"}
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    cases = st.one_of([op.as_strategy(generation_mode=mode) for op in operations for mode in modes])
    seen: Counter = Counter()
    failures: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def one(case) -> None:
        response = case.call(base_url=service.base, headers=headers, timeout=30)
        seen[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {case.body!r:.200} -> {response.status_code}")
        # the document is accurate: every answer's status, media type and body are the documented ones
        try:
            case.validate_response(response, checks=ACCURACY)
        except (AssertionError, BaseExceptionGroup) as exc:  # one failure, or a group of them
            failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {str(exc)[:300]}")

    one()
    print(f"fuzzed {service.base} (token: {bool(service.token)}): {dict(sorted(seen.items()))}")
    assert not failures, failures[:5]
    return seen


def test_fuzzing_the_api_with_a_token_gets_no_5xx(tmp_path_factory, redis):
    service = ServeProcess(tmp_path_factory.mktemp("fuzz"), redis, token=TOKEN,
                           config={"serve": {"max_streams": 4}, "redis": {"url": redis.url, "prefix": "fuzz:"}})
    service.start()
    try:
        seen = fuzz(service)
        assert service.request("GET", "/livez").status == 200 and service.process.poll() is None
        assert sum(seen.values()) >= EXAMPLES // 2 and any(400 <= s < 500 for s in seen), seen
        assert "answered 500" not in service.stderr()
    finally:
        service.stop()


def test_fuzzing_the_api_without_a_token_on_loopback_gets_no_5xx(tmp_path_factory, redis):
    service = ServeProcess(tmp_path_factory.mktemp("fuzz-open"), redis, token=None,
                           config={"serve": {"max_streams": 4}, "redis": {"url": redis.url, "prefix": "fuzzopen:"}})
    service.start()
    try:
        seen = fuzz(service)
        assert service.request("GET", "/livez").status == 200 and service.process.poll() is None
        assert sum(seen.values()) >= EXAMPLES // 2, seen
        assert "answered 500" not in service.stderr()
    finally:
        service.stop()
