"""Reference images of the anomaly mode in the prompt store (Redis), next to the exemplars.

Reached as `RedisPromptStore.references`. Key layout (same namespace prefix and hash tag as the
exemplars, see redis_store.py):

    inspect:ns:{ns}:refs            HASH   reference id -> stored rows
    inspect:ns:{ns}:ref:<id>        HASH   image_hash, width, height, rows, dim, fingerprint (of
                                           the feature extractor), author, created_at, [note]
    inspect:ns:{ns}:reffeat:<id>    STRING rows x dim little-endian float16, k-center order (a
                                           replica reads only the prefix its memory budget needs,
                                           with GETRANGE)
    inspect:ns:{ns}:anomaly         HASH   fingerprint and dim of the references' features (while
                                           there is one), and the settings overrides: threshold,
                                           min_region_fraction, unknown_rejects

The same rules as exemplars: every change is one Lua script (checks, writes, version INCR and
PUBLISH on the namespace's channel), so a change is all or nothing with its own version and event;
the first write creates the namespace bound to the service's model (fingerprint and embedding
dimension; another model is refused with ModelMismatch); references of another feature extractor
are refused the same way; registering the same image again is a no-op returning the same id, so
adds are retried on connection errors and removals are not. Deleting the namespace removes its
references (redis_store.py). Export/import carry exemplars only: references are re-registered
from their images (scripts/register_references.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from prompt_store.errors import InvalidInput, ModelMismatch, NotFound
from prompt_store.lua import LUA_PRELUDE
from prompt_store.records import (
    image_hash,
    validate_fingerprint,
    validate_label,
    validate_namespace,
    validate_note,
)
from prompt_store.references import (
    ANOMALY_KEY,
    REFS_KEY,
    AnomalySettings,
    NewReference,
    ReferenceAdd,
    ReferenceRecord,
    ReferenceSnapshot,
    patches_from_bytes,
    patches_to_bytes,
    reference_id,
)

if TYPE_CHECKING:
    from prompt_store.redis_store import RedisPromptStore

MAX_IMAGE_SIDE = 1_000_000

# ARGV[1]: JSON header {ns, fingerprint, dim, feature_fingerprint, feature_dim, now, n, max_refs};
# then n groups of 9: id, image_hash, width, height, rows, features, author, note, has_note.
# Returns {'ok', version, flags} | {'mismatch', fp, dim} | {'feature_mismatch', fp, dim}
# | {'too_many', current}.
_LUA_ADD_REFERENCES = (
    LUA_PRELUDE
    + r"""
local h = cjson.decode(ARGV[1])
for i = 1, h.n do
  local b = 2 + (i - 1) * 9
  if string.len(ARGV[b + 5]) ~= 2 * tonumber(ARGV[b + 4]) * h.feature_dim then
    return redis.error_reply('ERR prompt_store: malformed reference ' .. ARGV[b])
  end
end
local fp = redis.call('HGET', meta_key, 'fingerprint')
local created_ns = false
if not fp then
  redis.call('HSET', meta_key, 'fingerprint', h.fingerprint, 'embed_dim', h.dim,
             'created_at', h.now, 'schema', '1')
  created_ns = true
elseif fp ~= h.fingerprint or tonumber(redis.call('HGET', meta_key, 'embed_dim')) ~= h.dim then
  return {'mismatch', fp, redis.call('HGET', meta_key, 'embed_dim')}
end
local A = P .. 'anomaly'
local count = redis.call('HLEN', P .. 'refs')
local afp = redis.call('HGET', A, 'fingerprint')
if count > 0 and afp and (afp ~= h.feature_fingerprint or
                          tonumber(redis.call('HGET', A, 'dim')) ~= h.feature_dim) then
  return {'feature_mismatch', afp, redis.call('HGET', A, 'dim')}
end
local new = 0
for i = 1, h.n do
  local b = 2 + (i - 1) * 9
  if redis.call('HEXISTS', P .. 'refs', ARGV[b]) == 0 then new = new + 1 end
end
if count + new > h.max_refs then return {'too_many', count} end
redis.call('HSET', A, 'fingerprint', h.feature_fingerprint, 'dim', h.feature_dim)
local flags, n_created, last_id = {}, 0, nil
for i = 1, h.n do
  local b = 2 + (i - 1) * 9
  local id = ARGV[b]
  if redis.call('HEXISTS', P .. 'refs', id) == 1 then
    flags[i] = '0'
  else
    local fields = {'image_hash', ARGV[b + 1], 'width', ARGV[b + 2], 'height', ARGV[b + 3],
                    'rows', ARGV[b + 4], 'dim', h.feature_dim, 'fingerprint', h.feature_fingerprint,
                    'author', ARGV[b + 6], 'created_at', h.now}
    if ARGV[b + 8] == '1' then
      fields[#fields + 1] = 'note'
      fields[#fields + 1] = ARGV[b + 7]
    end
    redis.call('HSET', P .. 'ref:' .. id, unpack(fields))
    redis.call('SET', P .. 'reffeat:' .. id, ARGV[b + 5])
    redis.call('HSET', P .. 'refs', id, ARGV[b + 4])
    flags[i] = '1'
    n_created = n_created + 1
    last_id = id
  end
end
local version = current_version()
if n_created > 0 or created_ns then
  local ev = {namespace = h.ns, kind = 'references_added', count = n_created}
  if n_created == 0 then ev.kind = 'namespace_created' end
  if n_created == 1 then ev.reference_id = last_id end
  version = bump(ev)
end
return {'ok', version, table.concat(flags)}
"""
)

# ARGV: ns, id. Returns {'ok', version} | {'no_namespace'} | {'not_found'}.
_LUA_REMOVE_REFERENCE = (
    LUA_PRELUDE
    + r"""
if redis.call('EXISTS', meta_key) == 0 then return {'no_namespace'} end
local id = ARGV[2]
if redis.call('HDEL', P .. 'refs', id) == 0 then return {'not_found'} end
redis.call('DEL', P .. 'ref:' .. id, P .. 'reffeat:' .. id)
if redis.call('HLEN', P .. 'refs') == 0 then
  redis.call('HDEL', P .. 'anomaly', 'fingerprint', 'dim')
end
local v = bump({namespace = ARGV[1], kind = 'reference_removed', reference_id = id, count = 1})
return {'ok', v}
"""
)

# ARGV: ns, then pairs (field, value) of the overrides to keep; the others are removed.
# Returns {'ok', version} | {'no_namespace'}.
_LUA_SET_SETTINGS = (
    LUA_PRELUDE
    + r"""
if redis.call('EXISTS', meta_key) == 0 then return {'no_namespace'} end
local A = P .. 'anomaly'
redis.call('HDEL', A, 'threshold', 'min_region_fraction', 'unknown_rejects')
for i = 2, #ARGV, 2 do
  redis.call('HSET', A, ARGV[i], ARGV[i + 1])
end
local v = bump({namespace = ARGV[1], kind = 'anomaly_settings_changed'})
return {'ok', v}
"""
)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_id(rid: Any) -> str:
    if not isinstance(rid, str) or len(rid) != 32 or any(c not in "0123456789abcdef" for c in rid):
        raise InvalidInput(f"reference id {rid!r} is not 32 lowercase hex characters")
    return rid


class RedisReferenceStore:
    """Reference operations over a RedisPromptStore's client (its retries and error mapping)."""

    def __init__(self, store: RedisPromptStore) -> None:
        from prompt_store.redis_store import prefix

        self._store = store
        self._client = store.client
        self._prefix = prefix
        self._add = self._client.register_script(_LUA_ADD_REFERENCES)
        self._remove = self._client.register_script(_LUA_REMOVE_REFERENCE)
        self._set = self._client.register_script(_LUA_SET_SETTINGS)

    def _call(self, fn: Any, *, idempotent: bool, what: str) -> Any:
        return self._store._call(fn, idempotent=idempotent, what=what)

    # ---- writes -------------------------------------------------------------------------------

    def add_references(
        self,
        ns: str,
        items: Sequence[NewReference],
        *,
        fingerprint: str,
        embed_dim: int,
        feature_fingerprint: str,
        max_references: int = 10_000,
    ) -> list[ReferenceAdd]:
        """Register references atomically (one version bump and event for all the new ones).

        `fingerprint`/`embed_dim`: the service's model (creates the namespace on first write, or
        must match it); `feature_fingerprint`: the extractor of the features (must match the
        namespace's references, if any). Same image again: created=False, nothing changes.
        Refused (InvalidInput) when the namespace would hold more than `max_references`.
        """
        validate_namespace(ns)
        validate_fingerprint(fingerprint)
        validate_fingerprint(feature_fingerprint)
        if not items:
            raise InvalidInput("no references given")
        if not isinstance(embed_dim, int) or not 0 < embed_dim <= 4096:
            raise InvalidInput(f"embed_dim must be an integer in 1..4096, got {embed_dim!r}")
        rows: list[tuple[str, str, int, int, int, bytes, str, str | None]] = []
        seen: set[str] = set()
        dims = set()
        for item in items:
            if not isinstance(item, NewReference):
                raise InvalidInput("add_references takes NewReference items")
            data = item.image_bytes
            if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
                raise InvalidInput("image_bytes must be non-empty bytes")
            for side in (item.width, item.height):
                if isinstance(side, bool) or not isinstance(side, int):
                    raise InvalidInput("reference width and height must be integers")
                if not 0 < side <= MAX_IMAGE_SIDE:
                    raise InvalidInput(f"reference image side {side} is out of range")
            validate_label(item.author, "author")
            note = validate_note(item.note)
            feats, n_rows, dim = patches_to_bytes(item.patches)
            dims.add(dim)
            ih = image_hash(bytes(data))
            rid = reference_id(ih)
            if rid in seen:
                continue  # the same image twice in one call: once
            seen.add(rid)
            rows.append((rid, ih, item.width, item.height, n_rows, feats, item.author, note))
        if len(dims) != 1:
            raise InvalidInput(f"features of one call must share a dimension, got {sorted(dims)}")
        feature_dim = dims.pop()
        from prompt_store.redis_store import _now

        header = {
            "ns": ns,
            "fingerprint": fingerprint,
            "dim": embed_dim,
            "feature_fingerprint": feature_fingerprint,
            "feature_dim": feature_dim,
            "now": _now(),
            "n": len(rows),
            "max_refs": int(max_references),
        }
        args: list[Any] = [json.dumps(header)]
        for rid, ih, w, h, n_rows, feats, author, note in rows:
            args += [rid, ih, w, h, n_rows, feats, author, note or "", "1" if note else "0"]
        reply = self._call(
            lambda: self._add(keys=[self._prefix(ns) + "meta"], args=args),
            idempotent=True,
            what=f"registering references in {ns!r}",
        )
        status = _text(reply[0])
        if status == "mismatch":
            stored_dim = int(reply[2]) if reply[2] is not None else None
            raise ModelMismatch(ns, _text(reply[1]), fingerprint, stored_dim, embed_dim)
        if status == "feature_mismatch":
            raise ModelMismatch(
                ns, _text(reply[1]), feature_fingerprint, int(reply[2]), feature_dim
            )
        if status == "too_many":
            raise InvalidInput(
                f"namespace {ns!r} holds {int(reply[1])} references; adding {len(rows)} would "
                f"exceed the limit of {max_references} (INSPECT_ANOMALY_MAX_REFERENCES)"
            )
        version, flags = int(reply[1]), _text(reply[2])
        by_id = {r[0]: flag == "1" for r, flag in zip(rows, flags, strict=True)}
        out = []
        for item in items:  # one result per item, duplicates included
            rid = reference_id(image_hash(bytes(item.image_bytes)))
            created = by_id.pop(rid, False)
            out.append(ReferenceAdd(rid, version, created))
        return out

    def remove_reference(self, ns: str, rid: str) -> int:
        """Remove one reference; returns the new version."""
        validate_namespace(ns)
        _check_id(rid)
        reply = self._call(
            lambda: self._remove(keys=[self._prefix(ns) + "meta"], args=[ns, rid]),
            idempotent=False,
            what=f"removing reference {rid} from {ns!r}",
        )
        status = _text(reply[0])
        if status == "no_namespace":
            raise NotFound(f"namespace {ns!r} does not exist")
        if status == "not_found":
            raise NotFound(f"reference {rid} does not exist in namespace {ns!r}")
        return int(reply[1])

    def set_settings(self, ns: str, settings: AnomalySettings) -> int:
        """Replace the namespace's anomaly overrides (None fields: back to the defaults)."""
        validate_namespace(ns)
        if not isinstance(settings, AnomalySettings):
            raise InvalidInput("settings must be AnomalySettings")
        args: list[Any] = [ns]
        for key, value in settings.to_fields().items():
            args += [key, value]
        reply = self._call(
            lambda: self._set(keys=[self._prefix(ns) + "meta"], args=args),
            idempotent=True,
            what=f"setting the anomaly settings of {ns!r}",
        )
        if _text(reply[0]) == "no_namespace":
            raise NotFound(f"namespace {ns!r} does not exist")
        return int(reply[1])

    # ---- reads --------------------------------------------------------------------------------

    def snapshot(self, ns: str) -> ReferenceSnapshot:
        """Version, feature fingerprint, reference ids with their rows and the settings, read
        in one MULTI/EXEC round trip."""
        p = self._prefix(validate_namespace(ns))

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.get(p + "version").hget(p + "meta", "fingerprint")
            pipe.hgetall(p + ANOMALY_KEY).hgetall(p + REFS_KEY)
            return pipe.execute()

        version, fp, anomaly, refs = self._call(
            read, idempotent=True, what=f"reading the references of {ns!r}"
        )
        if fp is None:
            raise NotFound(f"namespace {ns!r} does not exist")
        fields = {_text(k): _text(v) for k, v in anomaly.items()}
        rows = {_text(k): int(v) for k, v in refs.items()}
        return ReferenceSnapshot(
            namespace=ns,
            version=int(version or 0),
            fingerprint=_text(fp),
            feature_fingerprint=fields.get("fingerprint") if rows else None,
            feature_dim=int(fields["dim"]) if rows and "dim" in fields else None,
            rows=rows,
            settings=AnomalySettings.from_fields(fields),
        )

    def fetch_features(self, ns: str, wanted: dict[str, int], dim: int) -> dict[str, np.ndarray]:
        """{id: (rows, dim) float16} for up to `wanted[id]` leading rows of each reference.

        References removed meanwhile are simply missing from the answer (their content never
        changes while they exist: ids are content hashes).
        """
        p = self._prefix(validate_namespace(ns))
        ids = [_check_id(i) for i in wanted]

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for rid in ids:
                pipe.getrange(p + "reffeat:" + rid, 0, 2 * dim * max(1, wanted[rid]) - 1)
            return pipe.execute()

        raw = self._call(read, idempotent=True, what=f"reading reference features of {ns!r}")
        return {
            rid: patches_from_bytes(bytes(data), dim)
            for rid, data in zip(ids, raw, strict=True)
            if data
        }

    def list_references(self, ns: str) -> list[ReferenceRecord]:
        """Every reference's metadata (no features), sorted by id."""
        p = self._prefix(validate_namespace(ns))
        snap = self.snapshot(ns)
        ids = sorted(snap.rows)

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for rid in ids:
                pipe.hgetall(p + "ref:" + rid)
            return pipe.execute()

        raws = self._call(read, idempotent=True, what=f"listing the references of {ns!r}")
        out = []
        for rid, raw in zip(ids, raws, strict=True):
            if not raw:
                continue  # removed meanwhile
            f = {_text(k): _text(v) for k, v in raw.items()}
            out.append(
                ReferenceRecord(
                    id=rid,
                    image_hash=f["image_hash"],
                    width=int(f["width"]),
                    height=int(f["height"]),
                    rows=int(f["rows"]),
                    fingerprint=f["fingerprint"],
                    author=f["author"],
                    created_at=f["created_at"],
                    note=f.get("note"),
                )
            )
        return out
