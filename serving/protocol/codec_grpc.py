"""Translation between the gRPC Open Inference Protocol messages and Turnout's internal types.

Only this module knows the protobuf layout of tensors (raw contents versus typed contents);
the servicer and data plane see numpy arrays. Every client mistake becomes ``InvalidInput``
with a message naming the tensor, so the servicer can answer INVALID_ARGUMENT verbatim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from serving.protocol import proto
from serving.protocol.datatypes import DATATYPE_TO_DTYPE, array_to_raw, dtype_for, raw_to_array
from serving.protocol.errors import InvalidInput
from serving.protocol.templates import RequestTemplate, TemplateCache
from serving.protocol.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RepositoryEntry,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    TensorSpec,
)

# The message classes are built at runtime from a descriptor pool, so they have no static
# types; this alias marks where one is expected.
Pb = Any

# The typed contents field for each datatype (FP16 has none and travels only raw).
TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The numpy dtype each numeric contents field carries on the wire.
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
# No tensor this large can exist; refusing it early keeps numpy's int64 arithmetic exact.
_MAX_ELEMENTS = 1 << 62
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1

# The content type of a serialized ModelInferRequest / ModelInferResponse sent over HTTP: the
# model server's protobuf-over-HTTP route and the router's hop to it (docs/protocols.md).
PROTOBUF_CONTENT_TYPE = b"application/x-protobuf"
# Named in the server metadata's extensions (``GET /v2``) by servers that take it; the router
# looks for it before choosing that hop.
PROTOBUF_EXTENSION = "turnout_protobuf_infer"


# -- request messages --------------------------------------------------------------------
class Undecodable:
    """What a gRPC request deserializer hands on for bytes that are not the message, so the
    handler answers INVALID_ARGUMENT with the reason (grpcio itself would answer INTERNAL)."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


class Decoded:
    """A ModelInferRequest already translated by its deserializer (:func:`infer_parser`): the
    internal request, and what the servicer reads of the message."""

    __slots__ = ("internal", "model_name", "model_version", "raw")

    def __init__(self, internal: InferenceRequest, model_name: str, model_version: str,
                 raw: bool) -> None:
        self.internal, self.model_name, self.model_version, self.raw = (
            internal, model_name, model_version, raw)


def decoded_request(request: Pb | Decoded) -> tuple[InferenceRequest, bool]:
    """The internal request and whether it carried raw contents (its answer must too), from
    a :class:`Decoded` or a message (which raises ``InvalidInput`` where it is wrong)."""
    if isinstance(request, Decoded):
        return request.internal, request.raw
    return request_to_internal(request), bool(request.raw_input_contents)


# Field tags of ModelInferRequest (every field is length-delimited: wire type 2).
_ID_TAG, _RAW_TAG = 0x1A, 0x3A
_REQUEST_TAGS = frozenset((0x0A, 0x12, _ID_TAG, 0x22, 0x2A, 0x32, _RAW_TAG))


def _scan_infer_request(data: bytes) -> tuple[bytes, bytes | None, list[memoryview]] | None:
    """The template key of a serialized ModelInferRequest (its bytes without the id and the
    raw contents), the id's bytes and the raw contents; None for any other layout (a field
    after the raw contents, an unknown or repeated-id field, a bad length), which the caller
    decodes fully. The key holds every byte that decoding the rest depends on."""
    i, n = 0, len(data)
    head_end = -1
    id_span: tuple[int, int, int] | None = None
    spans = []
    while i < n:
        start, tag = i, data[i]
        if tag not in _REQUEST_TAGS or i + 1 >= n:
            return None
        length = data[i + 1]
        i += 2
        if length & 0x80:  # a varint of up to five bytes
            length &= 0x7F
            shift = 7
            while True:
                if i >= n or shift > 28:
                    return None
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
        end = i + length
        if end > n:
            return None
        if tag == _RAW_TAG:
            if head_end < 0:
                head_end = start
            spans.append((i, end))
        elif head_end >= 0:
            return None
        elif tag == _ID_TAG:
            if id_span is not None:
                return None
            id_span = (start, i, end)
        i = end
    if head_end < 0:
        return None
    view = memoryview(data)
    raws = [view[a:b] for a, b in spans] if len(spans) > 1 else [view[spans[0][0]:spans[0][1]]]
    if id_span is None:
        return data[:head_end], None, raws
    start, value, end = id_span
    return data[:start] + data[end:head_end], data[value:end], raws


def infer_parser(templates: TemplateCache | None = None) -> Callable[[bytes], Any]:
    """The ModelInfer deserializer: a :class:`Decoded` request, :class:`Undecodable` for bytes
    that are not the message, or the message itself where its contents are wrong (the
    servicer decodes it again and answers the error). A head seen before is built from its
    template (serving/protocol/templates.py) without a protobuf parse."""
    cache = TemplateCache() if templates is None else templates
    parse_message = lenient_parser(proto.ModelInferRequest)

    def parse(data: bytes) -> Any:
        found = _scan_infer_request(data) if type(data) is bytes else None
        if found is not None:
            template = cache.get(found[0])
            if template is not None:
                internal = _from_template(template, found[1], found[2])
                if internal is not None:
                    return Decoded(internal, template.model_name,
                                   template.model_version or "", True)
        message = parse_message(data)
        if type(message) is Undecodable:
            return message
        try:
            internal = request_to_internal(message)
        except InvalidInput:
            return message
        raw = bool(message.raw_input_contents)
        if found is not None and raw:
            cache.remember(found[0], internal)
        return Decoded(internal, message.model_name, message.model_version, raw)
    return parse


def _from_template(template: RequestTemplate, request_id: bytes | None,
                   raws: list[memoryview]) -> InferenceRequest | None:
    """The request a template and this call's id and raw contents make; None where the id is
    not UTF-8 or a size differs (the full parse answers those)."""
    try:
        text = request_id.decode() if request_id else None
    except UnicodeDecodeError:
        return None
    return template.build(raws, text, template.model_name, template.model_version)


def request_parser(method: str, request_cls: Any) -> Callable[[bytes], Any]:
    """The request deserializer every gRPC engine registers for ``method``: ModelInfer's
    decodes to the internal request at once (:func:`infer_parser`), the others parse."""
    return infer_parser() if method == "ModelInfer" else lenient_parser(request_cls)


def lenient_parser(message_cls: Any) -> Callable[[bytes], Any]:
    """``message_cls.FromString`` that returns :class:`Undecodable` instead of raising."""
    name = message_cls.DESCRIPTOR.name

    def parse(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return Undecodable(InvalidInput(f"malformed {name}: {exc}"))
    return parse


# -- parameters ----------------------------------------------------------------------------
def parameters_to_dict(params: Mapping[str, Pb], *, where: str) -> Parameters:
    """An InferParameter map as a plain dict; a parameter with no value set is a client error."""
    out: Parameters = {}
    if not params:  # the usual case, without iterating the protobuf map
        return out
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidInput(f"{where} parameter '{key}' has no value set")
        out[key] = getattr(value, kind)
    return out


def fill_parameters(target: Pb, params: Parameters) -> None:
    """Write a plain dict into an InferParameter map, picking the field from the value's type."""
    for key, value in params.items():
        param = target[key]
        if isinstance(value, bool | np.bool_):
            param.bool_param = bool(value)
        elif isinstance(value, int | np.integer) and _INT64_MIN <= int(value) <= _INT64_MAX:
            param.int64_param = int(value)
        elif isinstance(value, int | np.integer) and 0 <= int(value) <= _UINT64_MAX:
            param.uint64_param = int(value)
        elif isinstance(value, float | np.floating):
            param.double_param = float(value)
        elif isinstance(value, bytes):
            param.string_param = value.decode("utf-8", errors="replace")
        else:  # strings, and anything else in its readable form rather than an error
            param.string_param = str(value)


# -- requests --------------------------------------------------------------------------------
def request_to_internal(request: Pb) -> InferenceRequest:
    """Decode a ModelInferRequest; raw buffers become numpy views without a copy.

    Every protobuf field read is a C call that builds a Python object, so each is read once
    (this runs once per request: ~3.5 µs for one raw input).
    """
    raw = request.raw_input_contents
    tensors = request.inputs
    if raw and len(raw) != len(tensors):
        _refuse_mixed_contents(tensors)
        raise InvalidInput(f"request has {len(tensors)} inputs but "
                           f"{len(raw)} raw_input_contents; raw contents need one entry "
                           "per input, in the same order")
    inputs = []
    index = 0
    for tensor in tensors:
        name, datatype = tensor.name, tensor.datatype
        if raw and tensor.HasField("contents") and tensor.contents.ListFields():
            _refuse_mixed_contents(tensors)
        if datatype not in DATATYPE_TO_DTYPE:
            dtype_for(datatype)  # unknown datatypes fail before anything else
        shape = _shape_of(tensor, name)
        if raw:
            data = raw_to_array(raw[index], datatype, shape, name=name)
            index += 1
        else:
            data = _typed_to_array(tensor, shape)
        params = tensor.parameters
        inputs.append(Tensor(name, datatype, data, parameters_to_dict(
            params, where=f"input '{name}'") if params else {}))
    requested = request.outputs
    outputs = [RequestedOutput(o.name, parameters_to_dict(o.parameters,
                                                          where=f"output '{o.name}'"))
               for o in requested] if requested else None
    params = request.parameters
    return InferenceRequest(
        inputs=inputs,
        model_name=request.model_name,
        model_version=request.model_version or None,
        id=request.id or None,
        parameters=parameters_to_dict(params, where="request") if params else {},
        outputs=outputs or None,
    )


def _refuse_mixed_contents(tensors: Iterable[Pb]) -> None:
    """With raw_input_contents, no input may also carry typed contents."""
    typed = [t.name for t in tensors if t.HasField("contents") and t.contents.ListFields()]
    if typed:
        raise InvalidInput(f"input(s) {typed} carry typed contents while the request also "
                           "uses raw_input_contents; send every input one way")


def _shape_of(tensor: Pb, name: str) -> tuple[int, ...]:
    shape = tuple(tensor.shape[:])  # a slice of the repeated field converts ~2x faster
    if shape and min(shape) < 0:
        raise InvalidInput(f"input '{name}' has a negative dimension in shape {list(shape)}")
    if math.prod(shape) >= _MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}' has an impossibly large shape {list(shape)}")
    return shape


def _typed_to_array(tensor: Pb, shape: tuple[int, ...]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} has no typed contents field; "
                           "send it in raw_input_contents")
    wrong = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if wrong:
        raise InvalidInput(f"input '{name}' is {datatype} but carries {', '.join(wrong)}; "
                           f"{datatype} data goes in {field}")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': {len(values)} values in {field} do not match "
                           f"shape {list(shape)} ({count} expected)")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.array(values, dtype=_FIELD_DTYPE[field])
    target = dtype_for(datatype)
    if wide.dtype != target:  # INT8/16 and UINT8/16 share a 32-bit field
        info = np.iinfo(target)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"input '{name}' holds values outside the range of {datatype}")
        wide = wide.astype(target)
    return wide.reshape(shape)


# -- responses -------------------------------------------------------------------------------
def response_from_internal(response: InferenceResponse, *, raw: bool) -> Pb:
    """Encode an InferenceResponse, raw when the client sent raw (or an output is FP16).

    The protocol allows raw contents only for every output at once, so one FP16 output makes
    the whole response raw.
    """
    if not raw:
        for tensor in response.outputs:
            if tensor.datatype == "FP16":
                raw = True
    message = proto.ModelInferResponse(model_name=response.model_name,
                                       model_version=response.model_version or "",
                                       id=response.id or "")
    if response.parameters:
        fill_parameters(message.parameters, response.parameters)
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                  shape=tensor.data.shape)
        if tensor.parameters:
            fill_parameters(out.parameters, tensor.parameters)
        if raw:
            message.raw_output_contents.append(array_to_raw(tensor.data))
        else:
            _fill_typed(out.contents, tensor)
    return message


# Serialized ModelInferResponse pieces, by what they hold. Protobuf defines a message's encoding
# as its fields' encodings in any order, and a repeated field's entries as concatenated
# records, so a response is its cached head (model name and version), its id, one cached
# record per output's metadata and one record per raw output, in field order: byte for byte
# what SerializeToString writes (tests/serving/grpc/test_grpc_codec.py compares them).
_HEADS: dict[tuple[str, str], bytes] = {}
_OUTPUT_RECORDS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
_CACHED_PIECES = 1024  # output shapes come from clients: a bounded cache, cleared when full
_RAW_OUTPUT_TAG = b"\x32"  # field 6 (raw_output_contents), wire type 2 (length-delimited)


def encode_response(response: InferenceResponse, *, raw: bool) -> bytes:
    """The serialized ModelInferResponse of :func:`response_from_internal`, built from cached
    pieces when every output travels raw and nothing carries parameters (the usual answer to
    a raw request): no message objects per request, ~3x less time for a one-row answer."""
    outputs = response.outputs
    if not raw:
        raw = any(t.datatype == "FP16" for t in outputs)
    if not raw or response.parameters or any(t.parameters for t in outputs):
        return response_from_internal(response, raw=raw).SerializeToString()
    version = response.model_version or ""
    head = _HEADS.get((response.model_name, version))
    if head is None:
        head = proto.ModelInferResponse(model_name=response.model_name,
                                        model_version=version).SerializeToString()
        if len(_HEADS) >= _CACHED_PIECES:
            _HEADS.clear()
        _HEADS[(response.model_name, version)] = head
    parts = [head]
    if response.id:
        parts.append(proto.ModelInferResponse(id=response.id).SerializeToString())
    contents: list[Any] = []
    for tensor in outputs:
        data = tensor.data
        key = (tensor.name, tensor.datatype, data.shape)
        record = _OUTPUT_RECORDS.get(key)
        if record is None:
            record = _output_record(*key)
        parts.append(record)
        payload = array_to_raw(data)
        contents += (_RAW_OUTPUT_TAG, _varint(len(payload)), payload)
    return b"".join(parts + contents)


def _output_record(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    message = proto.ModelInferResponse()
    message.outputs.add(name=name, datatype=datatype, shape=shape)
    record: bytes = message.SerializeToString()
    if len(_OUTPUT_RECORDS) >= _CACHED_PIECES:
        _OUTPUT_RECORDS.clear()
    _OUTPUT_RECORDS[(name, datatype, shape)] = record
    return record


def _varint(value: int) -> bytes:
    """A protobuf base-128 varint (a length here: never negative)."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def serialize_response(message: Pb | bytes) -> bytes:
    """ModelInfer's response serializer: the servicers answer with :func:`encode_response`'s
    bytes; a message (from an interceptor, say) is serialized as usual."""
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


def response_serializer(method: str, response_cls: Any) -> Callable[[Any], bytes]:
    """The response serializer of an RPC for every engine: ModelInfer's answers arrive
    already encoded (:func:`serialize_response`); other RPCs answer with messages."""
    serializer: Callable[[Any], bytes] = serialize_response if method == "ModelInfer" \
        else response_cls.SerializeToString
    return serializer


def _fill_typed(contents: Pb, tensor: Tensor) -> None:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        values: list[Any] = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
    else:
        values = flat.tolist()
    getattr(contents, TYPED_FIELD[tensor.datatype]).extend(values)


# -- metadata and repository ----------------------------------------------------------------
def server_metadata_to_proto(meta: ServerMetadata) -> Pb:
    return proto.ServerMetadataResponse(name=meta.name, version=meta.version,
                                        extensions=meta.extensions)


def model_metadata_to_proto(meta: ModelMetadata) -> Pb:
    return proto.ModelMetadataResponse(
        name=meta.name, versions=meta.versions, platform=meta.platform,
        inputs=[_tensor_metadata(spec) for spec in meta.inputs],
        outputs=[_tensor_metadata(spec) for spec in meta.outputs])


def _tensor_metadata(spec: TensorSpec) -> Pb:
    return proto.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype,
                                                      shape=list(spec.shape))


def repository_index_to_proto(entries: Iterable[RepositoryEntry], *, ready_only: bool) -> Pb:
    index = proto.RepositoryIndexResponse.ModelIndex
    return proto.RepositoryIndexResponse(models=[
        index(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in entries if not ready_only or e.state == "READY"])


def repository_model_name(request: Pb, *, ignored: frozenset[str] = frozenset()) -> str:
    """The model named by a load or unload request from either client (see the .proto).

    Triton sends the name in field 2 (``model_name``), KServe in field 1, which Turnout's
    message calls ``repository_name``. Parameters in ``ignored`` have no meaning for Turnout
    (tritonclient always sends ``unload_dependents``); any other, such as Triton's ``config``
    override, would change what is loaded and is refused rather than silently dropped.
    """
    unsupported = sorted(set(request.parameters) - ignored)
    if unsupported:
        raise InvalidInput(f"repository parameters {unsupported} are not supported: Turnout "
                           "loads models as they are on disk")
    name = request.model_name or request.repository_name
    if not name:
        raise InvalidInput("the request names no model")
    return str(name)
