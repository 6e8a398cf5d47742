"""asl_platform.serving.app in-process: every input format and every error, through the real FastAPI app
(TestClient) on a real trained model, without Ray. The same app runs under Serve in test_deployments_e2e."""

from __future__ import annotations

import base64
import json
import re

import pytest
from fastapi.testclient import TestClient
from helpers.models import colour_image
from helpers.serving import png_header_only

from asl_platform.config import ServeConfig
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import LocalBackend


@pytest.fixture(scope="module")
def client(colour_model) -> TestClient:
    settings = ServeConfig(max_request_bytes=64 * 1024, max_image_pixels=1_000_000, max_batch_images=4)
    return TestClient(create_app(LocalBackend(colour_model, max_pixels=settings.max_image_pixels), settings))


def _raw(client, data: bytes, content_type: str, **kwargs):
    return client.post("/predict", content=data, headers={"content-type": content_type}, **kwargs)


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt,content_type", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_raw_body_in_each_image_format(client, fmt, content_type):
    for label in ("A", "B", "C", "space"):
        response = _raw(client, colour_image(label, fmt=fmt, seed=99), content_type)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == label
        assert body["model"] == {"name": "colours", "version": "v1"}
        assert body["elapsed_ms"] >= 0
        assert [p["label"] for p in body["top_k"]][0] == label
        assert abs(sum(p["probability"] for p in body["top_k"]) - 1) < 1e-3  # 4 classes, default top_k 5


def test_multipart_and_json_base64_and_data_url(client):
    image = colour_image("B", fmt="JPEG", seed=5)
    assert client.post("/predict", files={"file": ("b.jpg", image, "image/jpeg")}).json()["label"] == "B"
    encoded = base64.b64encode(image).decode()
    assert client.post("/predict", json={"image": encoded}).json()["label"] == "B"
    assert client.post("/predict", json={"image": "data:image/jpeg;base64," + encoded}).json()["label"] == "B"


def test_top_k_parameter(client):
    body = _raw(client, colour_image("C"), "image/png", params={"top_k": 2}).json()
    assert len(body["top_k"]) == 2 and body["top_k"][0]["probability"] >= body["top_k"][1]["probability"]
    _error(_raw(client, colour_image("C"), "image/png", params={"top_k": 0}), 422, "invalid_parameter")
    _error(_raw(client, colour_image("C"), "image/png", params={"top_k": 99}), 422, "invalid_parameter")


def test_batch_multipart_and_json_keep_order_and_report_bad_items(client):
    files = [("files", (f"{label}.png", colour_image(label), "image/png")) for label in ("C", "A", "B")]
    files.insert(1, ("files", ("broken.jpg", b"\xff\xd8\xff not really", "image/jpeg")))
    body = client.post("/predict/batch", files=files).json()
    assert [r.get("label") for r in body["results"]] == ["C", None, "A", "B"]
    assert [r["filename"] for r in body["results"]] == ["C.png", "broken.jpg", "A.png", "B.png"]
    assert body["results"][1]["error"]["code"] == "invalid_image"
    images = [base64.b64encode(colour_image(label)).decode() for label in ("space", "A")]
    body = client.post("/predict/batch", json={"images": images}).json()
    assert [r["label"] for r in body["results"]] == ["space", "A"]


def test_model_info_shows_a_metric_with_nothing_to_measure_as_null(colour_model):
    """A card may hold NaN (confident accuracy with no confident answer); JSON has no NaN, /v1/model must answer."""
    from asl_platform.model import ModelCard
    from asl_platform.serving.backends import describe_model

    card = ModelCard.load(colour_model)
    card.metrics = {**card.metrics, "cross_domain_confident_accuracy": float("nan")}
    info = describe_model(colour_model, card)
    assert info["metrics"]["cross_domain_confident_accuracy"] is None
    assert info["metrics"]["test_accuracy"] == card.metrics["test_accuracy"]
    json.dumps(info, allow_nan=False)  # raises on any NaN left


def test_health_model_info_docs_and_index(client):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["classes"] == ["A", "B", "C", "space"] and info["version"] == "v1" and len(info["sha256"]) == 16
    assert info["metrics"]["test_accuracy"] == 1.0
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/healthz", "/v1/model"} <= set(paths)
    assert client.get("/docs").status_code == 200
    assert client.get("/", follow_redirects=False).headers["location"] == "/demo/"
    assert "ASL alphabet recogniser" in client.get("/demo/").text


def test_healthz_shows_the_settings_read_at_use_time(colour_model):
    settings = ServeConfig(demo=False)
    client = TestClient(create_app(LocalBackend(colour_model), settings))
    assert client.get("/healthz").json()["settings"] == {"spell_hold_s": 1.0}
    settings.spell_hold_s = 0.3  # what ASLIngress.reconfigure does with a new user_config
    assert client.get("/healthz").json()["settings"] == {"spell_hold_s": 0.3}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("content_type", ["text/plain", "", "image/gif", "application/x-www-form-urlencoded"])
def test_unsupported_content_type_is_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _error(client.post("/predict", content=colour_image("A"), headers=headers), 415, "unsupported_media_type")


def test_raw_body_to_batch_endpoint_is_415(client):
    _error(client.post("/predict/batch", content=colour_image("A"), headers={"content-type": "image/png"}),
           415, "unsupported_media_type")


@pytest.mark.parametrize("data,why", [
    (b"", "empty"),
    (b"definitely not an image", "random"),
    (colour_image("A", fmt="JPEG")[:200], "truncated jpeg"),
    (colour_image("A", fmt="PNG")[:100], "truncated png"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "png signature only"),
])
def test_unusable_image_is_400(client, data, why):
    _error(_raw(client, data, "image/png"), 400, "invalid_image")


def test_huge_dimensions_and_bombs_are_413_before_decoding(client):
    _error(_raw(client, png_header_only(20_000, 20_000), "image/png"), 413, "image_too_large")
    _error(_raw(client, png_header_only(2_000, 1_000), "image/png"), 413, "image_too_large")  # over 1e6 pixels


def test_too_large_body_is_413_declared_or_streamed(client):
    _error(_raw(client, b"\0" * (64 * 1024 + 1), "image/png"), 413, "payload_too_large")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"\0" * 8192

    _error(client.post("/predict", content=chunks(), headers={"content-type": "image/png"}), 413, "payload_too_large")


def test_transfer_encoding_wins_over_a_small_content_length(client):
    """A body framed by Transfer-Encoding is measured as it arrives, whatever Content-Length claims."""
    def chunks():
        for _ in range(20):
            yield b"\0" * 8192

    response = client.post("/demo/gradio_api/upload", content=chunks(),
                           headers={"content-type": "application/json", "content-length": "10",
                                    "transfer-encoding": "chunked"})
    _error(response, 413, "payload_too_large")


def test_chunked_body_under_the_limit_is_answered(client):
    """A body without Content-Length is read by the size-limit middleware and handed on whole."""
    image = colour_image("B", fmt="PNG", seed=3)

    def chunks():
        yield from (image[i:i + 100] for i in range(0, len(image), 100))

    response = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "B"


@pytest.mark.parametrize("body,code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_request"),
    (b'{"img": "abc"}', "invalid_request"),
    (b'{"image": 42}', "invalid_request"),
    (b'{"image": "***not base64***"}', "invalid_base64"),
    (b'{"image": "aGVsbG8="}', "invalid_image"),  # valid base64 of "hello"
])
def test_bad_json_is_400(client, body, code):
    _error(client.post("/predict", content=body, headers={"content-type": "application/json"}), 400, code)


def test_bad_multipart_is_400(client):
    _error(client.post("/predict", data={"note": "no file"}, files={}, headers={}), 415, "unsupported_media_type")
    broken = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n\x00\x01"
    response = client.post("/predict", content=broken, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 400, response.text
    response = client.post("/predict", content=b"--XyZ--\r\n", headers={"content-type": "multipart/form-data; boundary=XyZ"})
    _error(response, 400, "invalid_request")
    two = [("file", ("a.png", colour_image("A"), "image/png")), ("file", ("b.png", colour_image("B"), "image/png"))]
    assert client.post("/predict", files=two).status_code == 400


def test_batch_limits(client):
    for count in (5, 9):  # limit + 1 and well over it: the same answer
        files = [("files", (f"{i}.png", colour_image("A", size=16), "image/png")) for i in range(count)]
        _error(client.post("/predict/batch", files=files), 413, "too_many_images")
    _error(client.post("/predict/batch", json={"images": []}), 400, "invalid_request")


def test_unknown_route_and_method_are_json(client):
    _error(client.get("/nope"), 404, "not_found")
    refused = client.get("/predict")
    _error(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == "POST"  # RFC 9110: a 405 says which methods the route takes
    assert client.delete("/v1/model").headers["allow"] == "GET"


def test_server_still_answers_after_bad_input(client):
    for data in (b"", b"junk", png_header_only(50_000, 50_000)):
        assert _raw(client, data, "image/png").status_code in (400, 413)
    assert _raw(client, colour_image("A"), "image/png").json()["label"] == "A"


def test_openapi_schema_is_openapi_3_and_every_reference_resolves(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    schema = json.loads(response.text)
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] and schema["paths"]
    references = re.findall(r'"\$ref":\s*"#/([^"]+)"', response.text)
    assert references  # the answers' models live in components
    for reference in references:
        node = schema
        for part in reference.split("/"):
            assert part in node, f"#/{reference} does not resolve"
            node = node[part]


# --------------------------------------------------------------------------- the OpenAPI contract


def test_openapi_declares_every_request_body_and_error(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/predict"]["post"]["requestBody"]["content"]) == {
        "image/jpeg", "image/png", "image/webp", "multipart/form-data", "application/json"}
    assert set(paths["/predict/batch"]["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    batch = paths["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["images"]["maxItems"] == 4  # the served limit, max_batch_images
    for path, method in [("/predict", "post"), ("/predict/batch", "post"), ("/v1/practice/check", "post")]:
        responses = paths[path][method]["responses"]
        assert {"200", "400", "413", "415", "422", "503"} <= set(responses), (path, responses.keys())
        assert responses["413"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/schemas/")
    top_k = next(q for q in paths["/predict"]["post"]["parameters"] if q["name"] == "top_k")["schema"]
    assert top_k["default"] == top_k["maximum"] == 4  # serve.top_k is 5, the model has 4 classes: its own default fits
    drawing = paths["/v1/practice/drawing"]["get"]
    assert set(drawing["responses"]["200"]["content"]) == {"image/png"}
    assert drawing["parameters"][0]["schema"]["enum"] == ["A", "B", "C", "space"]  # its letters (no shapes: each a 404)


def test_a_multipart_image_part_without_a_filename_is_read_as_the_image(client):
    """RFC 7578 only says a file part SHOULD name a filename; Starlette alone would read it as text."""
    image = colour_image("C", fmt="PNG", seed=4)
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: image/png\r\n\r\n"
            .encode() + image + f"\r\n--{boundary}--\r\n".encode())
    response = client.post("/predict", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "C"
    text_part = body.replace(b"Content-Type: image/png\r\n", b"")  # a plain text field is still not an image
    refused = client.post("/predict", content=text_part, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    _error(refused, 400, "invalid_request")


def test_docs_use_swagger_ui_from_this_server(client):
    page = client.get("/docs").text
    assert "cdn." not in page and "/docs/swagger-ui-bundle.js" in page
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in bundle.content[:2000]
    assert client.get("/docs/swagger-ui.css").status_code == 200
