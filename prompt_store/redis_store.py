"""The prompt store on Redis: exemplars, class prototypes, versions and change events.

Key layout (namespace `ns`; every key of a namespace starts with `inspect:ns:{ns}:`, the braces
are a hash tag so that a Redis Cluster keeps a namespace on one slot and scripts stay legal):

    inspect:ns:{ns}:meta            HASH   fingerprint, embed_dim, created_at, schema
    inspect:ns:{ns}:version         STRING integer; INCR on every change; survives
                                           delete_namespace so versions never go backwards
    inspect:ns:{ns}:classes         HASH   class name -> exemplar count
    inspect:ns:{ns}:protos          HASH   class name -> prototype, d little-endian float32
    inspect:ns:{ns}:members:<class> ZSET   exemplar ids of the class, all scores 0 (so ZRANGE
                                           is byte order: a fixed summation order)
    inspect:ns:{ns}:ex:<id>         HASH   class, emb (d LE float32), image_hash, region
                                           (canonical JSON), author, created_at, fingerprint,
                                           [note]
    inspect:ns:{ns}:exemplars       SET    all exemplar ids (resume, export)
    inspect:ns:{ns}:img:<sha256>    STRING encoded source image, stored once per hash
    inspect:ns:{ns}:imgref          HASH   image hash -> number of exemplars referencing it
    channel inspect:ns:{ns}:events  JSON   {namespace, version, kind, class_name, exemplar_id, ...}
    inspect:ns:{ns}:refs, ref:<id>, reffeat:<id>, anomaly
                                           reference images of the anomaly mode (their features,
                                           settings): prompt_store/reference_store.py

Atomicity: every change is one Lua script (validation first, then writes, then the prototype
recompute, INCR of the version and PUBLISH), so readers never see half a change and every change
has its own version and event. Reads that span several keys run in one read-only script
(`fetch_prototypes`: prototypes, counts, exemplar boxes and image hashes) or re-read until the
version did not move (export, re-extraction).

Prototypes: recomputed inside the script from *all* exemplars of the class, summed in float64 in
byte order of the exemplar ids, normalised, cast to float32. A running sum would be cheaper but
float addition is not associative, so concurrent writers would end with order-dependent bits (and
drift after removals); recomputing makes the prototype a pure function of the set of exemplars,
bit-identical to `records.prototype_of` whatever the interleaving. Cost: O(n_class * d) of Redis
time per write touching a class: well under a millisecond for few-shot classes (1-50 exemplars),
about 6 ms for a class of 1000 128-d exemplars on a busy 2-core machine. Batched adds recompute
each touched class once per batch.

Retries: only idempotent operations (reads, adds, which are no-ops when repeated) are retried with
exponential backoff on connection errors and timeouts; removals and renames are not (a retry after
a lost reply would report NotFound for a change that did happen).
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from prompt_store import export as export_io
from prompt_store.errors import (
    Conflict,
    InvalidInput,
    ModelMismatch,
    NotFound,
    StoreUnavailable,
)
from prompt_store.lua import LUA_PRELUDE
from prompt_store.records import (
    AddResult,
    ClassInfo,
    ClassSummary,
    ExemplarRecord,
    NamespaceDump,
    NamespaceInfo,
    NewExemplar,
    PrototypeSnapshot,
    Region,
    StoreEvent,
    embedding_from_bytes,
    embedding_to_bytes,
    exemplar_id,
    image_hash,
    validate_fingerprint,
    validate_label,
    validate_namespace,
    validate_note,
)
from prompt_store.references import LUA_WIPE_REFS
from prompt_store.settings import StoreSettings, redact_url

if TYPE_CHECKING:
    from prompt_store.reference_store import RedisReferenceStore

log = logging.getLogger(__name__)
T = TypeVar("T")
EncodeFn = Callable[[bytes, Region], np.ndarray]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_CONSISTENT_READ_ATTEMPTS = 20

# Shared Lua helpers; KEYS[1] is always the namespace's meta key, P its key prefix.
_LUA_COMMON = (
    LUA_PRELUDE
    + r"""
local function recompute(class, dim)
  local members = P .. 'members:' .. class
  local ids = redis.call('ZRANGE', members, 0, -1)
  if #ids == 0 then
    redis.call('HDEL', P .. 'protos', class)
    redis.call('HDEL', P .. 'classes', class)
    redis.call('DEL', members)
    return
  end
  local fmt = '<' .. string.rep('f', dim)
  local acc = {}
  for j = 1, dim do acc[j] = 0.0 end
  for _, id in ipairs(ids) do
    local v = {struct.unpack(fmt, redis.call('HGET', P .. 'ex:' .. id, 'emb'))}
    for j = 1, dim do acc[j] = acc[j] + v[j] end
  end
  local ss = 0.0
  for j = 1, dim do ss = ss + acc[j] * acc[j] end
  local norm = math.sqrt(ss)
  if norm > 0 then
    for j = 1, dim do acc[j] = acc[j] / norm end
  end
  redis.call('HSET', P .. 'protos', class, struct.pack(fmt, unpack(acc, 1, dim)))
  redis.call('HSET', P .. 'classes', class, #ids)
end

local function unref_image(h)
  if redis.call('HINCRBY', P .. 'imgref', h, -1) <= 0 then
    redis.call('HDEL', P .. 'imgref', h)
    redis.call('UNLINK', P .. 'img:' .. h)
  end
end

local function wipe()
  for _, c in ipairs(redis.call('HKEYS', P .. 'classes')) do
    redis.call('DEL', P .. 'members:' .. c)
  end
  local ids = redis.call('SMEMBERS', P .. 'exemplars')
  for _, id in ipairs(ids) do redis.call('DEL', P .. 'ex:' .. id) end
  for _, h in ipairs(redis.call('HKEYS', P .. 'imgref')) do
    redis.call('UNLINK', P .. 'img:' .. h)
  end
  redis.call('DEL', P .. 'classes', P .. 'protos', P .. 'exemplars', P .. 'imgref', meta_key)
  return #ids
end
"""
)

# ARGV[1]: JSON header {ns, fingerprint, dim, now, mode, create, expected_version, kind, n_images,
# n_ex}; then n_images pairs (hash, bytes); then n_ex groups of 9 (id, class, emb, image_hash,
# region, author, created_at, note, has_note). Returns {'ok', version, flags '0'/'1' per exemplar}.
_LUA_ADD = (
    _LUA_COMMON
    + r"""
local h = cjson.decode(ARGV[1])
local images = {}
local pos = 2
for i = 1, h.n_images do
  images[ARGV[pos]] = true
  pos = pos + 2
end
local first = pos
for i = 1, h.n_ex do
  local b = first + (i - 1) * 9
  if string.len(ARGV[b + 2]) ~= 4 * h.dim or not images[ARGV[b + 3]] then
    return redis.error_reply('ERR prompt_store: malformed exemplar ' .. ARGV[b])
  end
end
if h.expected_version >= 0 and current_version() ~= h.expected_version then
  return {'stale', current_version()}
end
local fp = redis.call('HGET', meta_key, 'fingerprint')
local dim_s = redis.call('HGET', meta_key, 'embed_dim')
if h.mode == 'replace_if_empty' then
  local n = redis.call('SCARD', P .. 'exemplars')
  if n > 0 then return {'not_empty', n} end
end
if h.mode ~= 'add' then
  wipe()
  fp = false
end
local created_ns = false
if not fp then
  if not h.create then return {'not_found'} end
  redis.call('HSET', meta_key, 'fingerprint', h.fingerprint, 'embed_dim', h.dim,
             'created_at', h.now, 'schema', '1')
  created_ns = true
elseif fp ~= h.fingerprint or tonumber(dim_s) ~= h.dim then
  return {'mismatch', fp, dim_s}
end
pos = 2
local bytes_of = {}
for i = 1, h.n_images do
  bytes_of[ARGV[pos]] = ARGV[pos + 1]
  pos = pos + 2
end
local flags = {}
local touched, touched_list = {}, {}
local n_created, last_id = 0, nil
for i = 1, h.n_ex do
  local b = first + (i - 1) * 9
  local id, class, ih = ARGV[b], ARGV[b + 1], ARGV[b + 3]
  local ekey = P .. 'ex:' .. id
  if redis.call('EXISTS', ekey) == 1 then
    flags[i] = '0'
  else
    local fields = {'class', class, 'emb', ARGV[b + 2], 'image_hash', ih, 'region', ARGV[b + 4],
                    'author', ARGV[b + 5], 'created_at', ARGV[b + 6], 'fingerprint', h.fingerprint}
    if ARGV[b + 8] == '1' then
      fields[#fields + 1] = 'note'
      fields[#fields + 1] = ARGV[b + 7]
    end
    redis.call('HSET', ekey, unpack(fields))
    redis.call('ZADD', P .. 'members:' .. class, 0, id)
    redis.call('SADD', P .. 'exemplars', id)
    if redis.call('HINCRBY', P .. 'imgref', ih, 1) == 1 then
      redis.call('SET', P .. 'img:' .. ih, bytes_of[ih])
    end
    if not touched[class] then
      touched[class] = true
      touched_list[#touched_list + 1] = class
    end
    flags[i] = '1'
    n_created = n_created + 1
    last_id = id
  end
end
for _, c in ipairs(touched_list) do recompute(c, h.dim) end
local version = current_version()
if n_created > 0 or created_ns or h.mode ~= 'add' then
  local kind = h.kind
  if n_created == 0 and h.mode == 'add' then kind = 'namespace_created' end
  local ev = {namespace = h.ns, kind = kind, count = n_created}
  if #touched_list == 1 then ev.class_name = touched_list[1] end
  if n_created == 1 then ev.exemplar_id = last_id end
  version = bump(ev)
end
return {'ok', version, table.concat(flags)}
"""
)

# ARGV: ns, exemplar id. Returns {'ok', version, class} | {'no_namespace'} | {'not_found'}.
_LUA_REMOVE_EXEMPLAR = (
    _LUA_COMMON
    + r"""
if redis.call('EXISTS', meta_key) == 0 then return {'no_namespace'} end
local id = ARGV[2]
local ekey = P .. 'ex:' .. id
local rec = redis.call('HMGET', ekey, 'class', 'image_hash')
if not rec[1] then return {'not_found'} end
local class = rec[1]
redis.call('DEL', ekey)
redis.call('SREM', P .. 'exemplars', id)
redis.call('ZREM', P .. 'members:' .. class, id)
unref_image(rec[2])
recompute(class, tonumber(redis.call('HGET', meta_key, 'embed_dim')))
local v = bump({namespace = ARGV[1], kind = 'exemplar_removed', class_name = class,
                exemplar_id = id, count = 1})
return {'ok', v, class}
"""
)

# ARGV: ns, class. Returns {'ok', version, removed count} | {'no_namespace'} | {'not_found'}.
_LUA_REMOVE_CLASS = (
    _LUA_COMMON
    + r"""
if redis.call('EXISTS', meta_key) == 0 then return {'no_namespace'} end
local class = ARGV[2]
if redis.call('HEXISTS', P .. 'classes', class) == 0 then return {'not_found'} end
local members = P .. 'members:' .. class
local ids = redis.call('ZRANGE', members, 0, -1)
for _, id in ipairs(ids) do
  local ekey = P .. 'ex:' .. id
  unref_image(redis.call('HGET', ekey, 'image_hash'))
  redis.call('DEL', ekey)
  redis.call('SREM', P .. 'exemplars', id)
end
redis.call('DEL', members)
redis.call('HDEL', P .. 'classes', class)
redis.call('HDEL', P .. 'protos', class)
local v = bump({namespace = ARGV[1], kind = 'class_removed', class_name = class, count = #ids})
return {'ok', v, #ids}
"""
)

# ARGV: ns, old, new, n, then n pairs (old id, new id) computed by the caller from what it read.
# Returns {'ok', version} | {'no_namespace'} | {'not_found'} | {'exists'} | {'stale'}.
_LUA_RENAME_CLASS = (
    _LUA_COMMON
    + r"""
if redis.call('EXISTS', meta_key) == 0 then return {'no_namespace'} end
local old, new, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', P .. 'classes', old) == 0 then return {'not_found'} end
if redis.call('HEXISTS', P .. 'classes', new) == 1 then return {'exists'} end
local old_members, new_members = P .. 'members:' .. old, P .. 'members:' .. new
if redis.call('ZCARD', old_members) ~= n then return {'stale'} end
for i = 0, n - 1 do
  local oid, nid = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  if not redis.call('ZSCORE', old_members, oid) then return {'stale'} end
  if oid ~= nid and redis.call('EXISTS', P .. 'ex:' .. nid) == 1 then return {'stale'} end
end
for i = 0, n - 1 do
  local oid, nid = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  if oid ~= nid then
    redis.call('RENAME', P .. 'ex:' .. oid, P .. 'ex:' .. nid)
    redis.call('SREM', P .. 'exemplars', oid)
    redis.call('SADD', P .. 'exemplars', nid)
  end
  redis.call('HSET', P .. 'ex:' .. nid, 'class', new)
  redis.call('ZADD', new_members, 0, nid)
end
redis.call('DEL', old_members)
redis.call('HDEL', P .. 'classes', old)
redis.call('HDEL', P .. 'protos', old)
recompute(new, tonumber(redis.call('HGET', meta_key, 'embed_dim')))
local v = bump({namespace = ARGV[1], kind = 'class_renamed', class_name = new,
                old_class_name = old, count = n})
return {'ok', v}
"""
)

# Read-only: what an inspection needs of a namespace, atomically. Returns {version, fingerprint,
# embed_dim, {class, prototype, ...}, {class, count, ...}, {class, region, image_hash, ...}}
# (fingerprint and embed_dim nil when the namespace does not exist; the region and source image of
# every exemplar, classes in byte order, exemplars in id order).
_LUA_FETCH_PROTOTYPES = (
    LUA_PRELUDE
    + r"""
local meta = redis.call('HMGET', meta_key, 'fingerprint', 'embed_dim')
local regions = {}
local classes = redis.call('HKEYS', P .. 'classes')
table.sort(classes)
for _, class in ipairs(classes) do
  for _, id in ipairs(redis.call('ZRANGE', P .. 'members:' .. class, 0, -1)) do
    local rec = redis.call('HMGET', P .. 'ex:' .. id, 'region', 'image_hash')
    regions[#regions + 1] = class
    regions[#regions + 1] = rec[1] or ''
    regions[#regions + 1] = rec[2] or ''
  end
end
return {current_version(), meta[1], meta[2], redis.call('HGETALL', P .. 'protos'),
        redis.call('HGETALL', P .. 'classes'), regions}
"""
)

# ARGV: ns. Returns {'ok', version, removed exemplars} | {'no_namespace'}.
_LUA_DELETE_NAMESPACE = (
    _LUA_COMMON
    + LUA_WIPE_REFS
    + r"""
if redis.call('EXISTS', meta_key) == 0 then return {'no_namespace'} end
local n = wipe()
wipe_refs()
local v = bump({namespace = ARGV[1], kind = 'namespace_deleted', count = n})
return {'ok', v, n}
"""
)


def _now() -> str:
    """ISO 8601 UTC with microseconds; stored as text so export/import keep it bit-exact."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def prefix(namespace: str) -> str:
    """Key prefix of a namespace (hash-tagged)."""
    return f"inspect:ns:{{{namespace}}}:"


def events_channel(namespace: str) -> str:
    """Pub/sub channel carrying a namespace's change events."""
    return prefix(namespace) + "events"


ALL_EVENTS_PATTERN = "inspect:ns:*:events"


def make_client(settings: StoreSettings) -> redis.Redis:
    """A redis-py client from settings. Connects lazily (first command), never here.

    redis-py's own retries are switched off: the store decides what is safe to retry.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": settings.max_connections,
        "health_check_interval": 30,
    }
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.username is not None:
        kwargs["username"] = settings.username
    if settings.uses_tls:
        kwargs["ssl_cert_reqs"] = settings.ssl_cert_reqs
        kwargs["ssl_check_hostname"] = (
            settings.ssl_check_hostname and settings.ssl_cert_reqs != "none"
        )
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, name)
            if value is not None:
                kwargs[name] = str(value)
    return redis.Redis.from_url(settings.url, **kwargs)


@dataclass(frozen=True)
class _Row:
    """An exemplar validated and serialised, ready for the add script."""

    id: str
    class_name: str
    emb: bytes
    image_hash: str
    region_json: str
    author: str
    created_at: str
    note: str | None

    def argv(self) -> list[str | bytes]:
        has_note = "1" if self.note is not None else "0"
        return [
            self.id,
            self.class_name,
            self.emb,
            self.image_hash,
            self.region_json,
            self.author,
            self.created_at,
            self.note or "",
            has_note,
        ]


class _Scripts:
    """The Lua scripts, registered with the client (hashing only; loaded on first use)."""

    def __init__(self, client: redis.Redis) -> None:
        self.add = client.register_script(_LUA_ADD)
        self.remove_exemplar = client.register_script(_LUA_REMOVE_EXEMPLAR)
        self.remove_class = client.register_script(_LUA_REMOVE_CLASS)
        self.rename_class = client.register_script(_LUA_RENAME_CLASS)
        self.delete_namespace = client.register_script(_LUA_DELETE_NAMESPACE)
        self.fetch_prototypes = client.register_script(_LUA_FETCH_PROTOTYPES)


def _s(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _status(reply: list[Any]) -> str:
    return _s(reply[0]) or ""


class RedisPromptStore:
    """The prompt store on a real Redis server. Thread-safe (one client pool per instance)."""

    def __init__(self, client: redis.Redis, settings: StoreSettings | None = None) -> None:
        self._client = client
        self._settings = settings or StoreSettings()
        self._scripts = _Scripts(client)
        self._references: RedisReferenceStore | None = None
        kwargs = client.connection_pool.connection_kwargs
        self._where = redact_url(
            self._settings.url if settings else f"redis://{kwargs.get('host')}:{kwargs.get('port')}"
        )

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> RedisPromptStore:
        """The usual constructor: settings from the environment (`get_settings()`)."""
        return cls(make_client(settings), settings)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RedisPromptStore:
        """Convenience for scripts and tests: StoreSettings(url=url, **overrides)."""
        return cls.from_settings(StoreSettings(url=url, **overrides))

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client (shared pool)."""
        return self._client

    @property
    def references(self) -> RedisReferenceStore:
        """The reference images of the anomaly mode (prompt_store/reference_store.py)."""
        if self._references is None:
            from prompt_store.reference_store import RedisReferenceStore

            self._references = RedisReferenceStore(self)
        return self._references

    def close(self) -> None:
        """Release pooled connections."""
        self._client.close()

    def ping(self) -> bool:
        """For /readyz: True, or StoreUnavailable with a message saying what to check."""
        return bool(self._call(self._client.ping, idempotent=True, what="PING"))

    # ---- namespaces ---------------------------------------------------------------------------

    def create_namespace(self, ns: str, fingerprint: str, embed_dim: int) -> NamespaceInfo:
        """Create an empty namespace bound to a model; a no-op if it exists with the same model."""
        validate_namespace(ns)
        validate_fingerprint(fingerprint)
        if not isinstance(embed_dim, int) or not 0 < embed_dim <= 4096:
            raise InvalidInput(f"embed_dim must be an integer in 1..4096, got {embed_dim!r}")
        self._run_add(
            ns,
            [],
            {},
            fingerprint=fingerprint,
            dim=embed_dim,
            mode="add",
            kind="namespace_created",
            create=True,
            idempotent=True,
        )
        return self.namespace_info(ns)

    def namespaces(self) -> list[str]:
        """All namespaces (sorted). Scans the keyspace: an admin call, not a hot path."""

        def scan() -> list[str]:
            names = set()
            for key in self._client.scan_iter(match="inspect:ns:*:meta", count=1000):
                text = _s(key) or ""
                if text.startswith("inspect:ns:{") and text.endswith("}:meta"):
                    names.add(text[len("inspect:ns:{") : -len("}:meta")])
            return sorted(names)

        return self._call(scan, idempotent=True, what="listing namespaces")

    def namespace_info(self, ns: str) -> NamespaceInfo:
        """Model, dimension, version and sizes of a namespace (NotFound if missing)."""
        p = prefix(validate_namespace(ns))

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(p + "meta").get(p + "version").hlen(p + "classes")
            pipe.scard(p + "exemplars").hlen(p + "imgref")
            return pipe.execute()

        meta, version, n_classes, n_ex, n_img = self._call(
            read, idempotent=True, what=f"reading namespace {ns!r}"
        )
        meta = self._require_meta(ns, meta)
        return NamespaceInfo(
            name=ns,
            fingerprint=meta["fingerprint"],
            embed_dim=int(meta["embed_dim"]),
            version=int(version or 0),
            created_at=meta["created_at"],
            class_count=int(n_classes),
            exemplar_count=int(n_ex),
            image_count=int(n_img),
        )

    def version(self, ns: str) -> int:
        """Current version counter of a namespace (0 if it never existed)."""
        p = prefix(validate_namespace(ns))
        raw = self._call(
            lambda: self._client.get(p + "version"),
            idempotent=True,
            what=f"reading the version of {ns!r}",
        )
        return int(raw or 0)

    def delete_namespace(self, ns: str) -> int:
        """Delete everything of a namespace; returns the new version (kept for ordering)."""
        validate_namespace(ns)
        reply = self._call(
            lambda: self._scripts.delete_namespace(keys=[prefix(ns) + "meta"], args=[ns]),
            idempotent=False,
            what=f"deleting namespace {ns!r}",
        )
        if _status(reply) == "no_namespace":
            raise NotFound(f"namespace {ns!r} does not exist")
        return int(reply[1])

    # ---- writes -------------------------------------------------------------------------------

    def add_exemplar(
        self,
        ns: str,
        class_name: str,
        embedding: np.ndarray,
        image_bytes: bytes,
        region: Region,
        author: str,
        note: str | None = None,
        *,
        fingerprint: str,
    ) -> AddResult:
        """Register one exemplar. Creates the namespace on first write (binding the model).

        Re-registering the same image, region and class returns the existing id with
        created=False and changes nothing (the first embedding stays). Adds are retried on
        connection errors because of this; after a lost reply the retry reports created=False.
        """
        item = NewExemplar(class_name, embedding, image_bytes, region, author, note)
        return self.add_exemplars(ns, [item], fingerprint=fingerprint)[0]

    def add_exemplars(
        self, ns: str, items: Sequence[NewExemplar], *, fingerprint: str
    ) -> list[AddResult]:
        """Register many exemplars atomically (all or nothing, one version bump, one event)."""
        validate_namespace(ns)
        validate_fingerprint(fingerprint)
        if not items:
            raise InvalidInput("no exemplars given")
        rows, images = self._prepare(items)
        dims = {len(r.emb) // 4 for r in rows}
        if len(dims) != 1:
            raise InvalidInput(f"embeddings of one call must share a dimension, got {sorted(dims)}")
        kind = "exemplar_added" if len(rows) == 1 else "exemplars_added"
        version, flags = self._run_add(
            ns,
            rows,
            images,
            fingerprint=fingerprint,
            dim=dims.pop(),
            mode="add",
            kind=kind,
            create=True,
            idempotent=True,
        )
        return [AddResult(r.id, version, flag == "1") for r, flag in zip(rows, flags, strict=True)]

    def remove_exemplar(self, ns: str, exemplar_id: str) -> int:
        """Remove one exemplar (its class goes when it was the last); returns the new version."""
        validate_namespace(ns)
        if not isinstance(exemplar_id, str) or not _HEX32.match(exemplar_id):
            raise InvalidInput(f"exemplar id {exemplar_id!r} is not 32 lowercase hex characters")
        reply = self._call(
            lambda: self._scripts.remove_exemplar(
                keys=[prefix(ns) + "meta"], args=[ns, exemplar_id]
            ),
            idempotent=False,
            what=f"removing exemplar {exemplar_id} from {ns!r}",
        )
        status = _status(reply)
        if status == "no_namespace":
            raise NotFound(f"namespace {ns!r} does not exist")
        if status == "not_found":
            raise NotFound(f"exemplar {exemplar_id} does not exist in namespace {ns!r}")
        return int(reply[1])

    def remove_class(self, ns: str, name: str) -> int:
        """Remove a class and all its exemplars; returns the new version."""
        validate_namespace(ns)
        validate_label(name, "class name")
        reply = self._call(
            lambda: self._scripts.remove_class(keys=[prefix(ns) + "meta"], args=[ns, name]),
            idempotent=False,
            what=f"removing class {name!r} from {ns!r}",
        )
        status = _status(reply)
        if status == "no_namespace":
            raise NotFound(f"namespace {ns!r} does not exist")
        if status == "not_found":
            raise NotFound(f"class {name!r} does not exist in namespace {ns!r}")
        return int(reply[1])

    def rename_class(self, ns: str, old: str, new: str) -> dict[str, str]:
        """Rename a class (refused if `new` exists). Returns {old exemplar id: new id}.

        Exemplar ids hash the class name, so they change with it: that keeps "same image, region
        and class is the same id" true after a rename (re-registering is still a no-op).
        """
        validate_namespace(ns)
        validate_label(old, "class name")
        validate_label(new, "class name")
        if old == new:
            raise InvalidInput("old and new class names are the same")
        for _attempt in range(_CONSISTENT_READ_ATTEMPTS):
            mapping = self._rename_mapping(ns, old, new)
            args: list[str | int] = [ns, old, new, len(mapping)]
            for oid, nid in mapping.items():
                args += [oid, nid]
            reply = self._call(
                lambda a=args: self._scripts.rename_class(keys=[prefix(ns) + "meta"], args=a),
                idempotent=False,
                what=f"renaming class {old!r} in {ns!r}",
            )
            status = _status(reply)
            if status == "ok":
                return mapping
            if status == "no_namespace":
                raise NotFound(f"namespace {ns!r} does not exist")
            if status == "not_found":
                raise NotFound(f"class {old!r} does not exist in namespace {ns!r}")
            if status == "exists":
                raise Conflict(f"class {new!r} already exists in namespace {ns!r}")
        raise Conflict(f"class {old!r} in {ns!r} kept changing during the rename; try again")

    # ---- reads --------------------------------------------------------------------------------

    def fetch_prototypes(self, ns: str, fingerprint: str) -> PrototypeSnapshot:
        """The (C, d) prototype matrix with its version and each class's exemplar boxes and source
        image hashes (the size prior's and the template check's input), in one read-only script:
        one round trip, one version."""
        validate_namespace(ns)
        validate_fingerprint(fingerprint)
        version, fp, dim, protos, counts, regions = self._call(
            lambda: self._scripts.fetch_prototypes(keys=[prefix(ns) + "meta"], args=[ns]),
            idempotent=True,
            what=f"fetching prototypes of {ns!r}",
        )
        if fp is None:
            raise NotFound(f"namespace {ns!r} does not exist")
        fp, dim = _s(fp), int(dim)
        if fp != fingerprint:
            raise ModelMismatch(ns, fp or "", fingerprint)
        by_name = {_s(k) or "": v for k, v in zip(protos[::2], protos[1::2], strict=True)}
        names = sorted(by_name)
        matrix = np.zeros((len(names), dim), dtype=np.float32)  # (C, d)
        for i, name in enumerate(names):
            matrix[i] = embedding_from_bytes(by_name[name], dim)
        count = {_s(k): int(v) for k, v in zip(counts[::2], counts[1::2], strict=True)}
        boxes: dict[str, list[tuple[float, ...]]] = {n: [] for n in names}
        images: dict[str, list[str]] = {n: [] for n in names}
        for cls, region, img in zip(regions[::3], regions[1::3], regions[2::3], strict=True):
            name = _s(cls) or ""
            if name in boxes and region:
                boxes[name].append(Region.from_json(_s(region) or "").box)
                images[name].append(_s(img) or "")
        return PrototypeSnapshot(
            ns,
            int(version),
            fp,
            names,
            matrix,
            [count.get(n, 0) for n in names],
            tuple(np.asarray(boxes[n], dtype=np.float32).reshape(-1, 4) for n in names),
            tuple(tuple(images[n]) for n in names),
        )

    def list_classes(self, ns: str) -> list[ClassSummary]:
        """Classes with their exemplar counts, sorted by name."""
        p = prefix(validate_namespace(ns))

        def read() -> list[Any]:
            return (
                self._client.pipeline(transaction=True)
                .exists(p + "meta")
                .hgetall(p + "classes")
                .execute()
            )

        exists, counts = self._call(read, idempotent=True, what=f"listing classes of {ns!r}")
        if not exists:
            raise NotFound(f"namespace {ns!r} does not exist")
        return sorted(
            (ClassSummary(_s(k) or "", int(v)) for k, v in counts.items()), key=lambda c: c.name
        )

    def get_class(self, ns: str, name: str, with_embeddings: bool = False) -> ClassInfo:
        """A class's exemplars (sorted by id) and prototype, read consistently."""
        validate_namespace(ns)
        validate_label(name, "class name")
        p = prefix(ns)

        def read() -> tuple[int, ClassInfo]:
            pipe = self._client.pipeline(transaction=True)
            pipe.get(p + "version").hget(p + "meta", "embed_dim")
            pipe.zrange(p + "members:" + name, 0, -1).hget(p + "protos", name)
            version, dim, ids, proto = pipe.execute()
            if dim is None:
                raise NotFound(f"namespace {ns!r} does not exist")
            if proto is None:
                raise NotFound(f"class {name!r} does not exist in namespace {ns!r}")
            records = self._read_exemplars(p, [_s(i) or "" for i in ids], int(dim), with_embeddings)
            info = ClassInfo(name, records, embedding_from_bytes(proto, int(dim)))
            return int(version or 0), info

        return self._consistent(ns, read, f"reading class {name!r} of {ns!r}")

    def exemplar_ids(self, ns: str) -> set[str]:
        """Ids of all exemplars (lets an interrupted offline job resume)."""
        p = prefix(validate_namespace(ns))
        ids = self._call(
            lambda: self._client.smembers(p + "exemplars"),
            idempotent=True,
            what=f"listing exemplar ids of {ns!r}",
        )
        return {_s(i) or "" for i in ids}

    def get_source_image(self, ns: str, img_hash: str) -> bytes:
        """The encoded prompt image stored for re-extraction."""
        validate_namespace(ns)
        if not isinstance(img_hash, str) or not _HEX64.match(img_hash):
            raise InvalidInput(f"image hash {img_hash!r} is not a sha256 hex digest")
        data = self._call(
            lambda: self._client.get(prefix(ns) + "img:" + img_hash),
            idempotent=True,
            what=f"reading image {img_hash} of {ns!r}",
        )
        if data is None:
            raise NotFound(f"image {img_hash} is not stored in namespace {ns!r}")
        return bytes(data)

    def dump_namespace(self, ns: str) -> NamespaceDump:
        """Everything a namespace holds, consistent with one version (export, re-extraction)."""
        validate_namespace(ns)
        p = prefix(ns)

        def read() -> tuple[int, NamespaceDump]:
            pipe = self._client.pipeline(transaction=True)
            pipe.get(p + "version").hgetall(p + "meta").smembers(p + "exemplars")
            pipe.hgetall(p + "protos").hkeys(p + "imgref")
            version, meta, ids, protos, hashes = pipe.execute()
            meta = self._require_meta(ns, meta)
            dim = int(meta["embed_dim"])
            records = self._read_exemplars(p, sorted(_s(i) or "" for i in ids), dim, True)
            images = self._read_images(p, sorted(_s(h) or "" for h in hashes))
            dump = NamespaceDump(
                namespace=ns,
                version=int(version or 0),
                fingerprint=meta["fingerprint"],
                embed_dim=dim,
                created_at=meta["created_at"],
                exemplars=records,
                images=images,
                prototypes={_s(k) or "": embedding_from_bytes(v, dim) for k, v in protos.items()},
            )
            return dump.version, dump

        return self._consistent(ns, read, f"reading namespace {ns!r}")

    # ---- export, import, re-extraction --------------------------------------------------------

    def export_namespace(self, ns: str, path: str | Path) -> Path:
        """Write the namespace to a JSON file (bit-exact: raw float32 and image bytes, base64)."""
        return export_io.write_document(
            Path(path), export_io.dump_to_document(self.dump_namespace(ns))
        )

    def import_namespace(
        self, path: str | Path, ns: str | None = None, *, overwrite: bool = False
    ) -> NamespaceInfo:
        """Load an export file into `ns` (default: the exported name), all or nothing.

        Refuses (Conflict) a namespace that has exemplars unless overwrite=True, which replaces
        it atomically. Ids, embeddings, authors and times are kept bit for bit; the version
        continues this server's counter.
        """
        dump = export_io.document_to_dump(export_io.read_document(Path(path)))
        target = validate_namespace(ns or dump.namespace)
        rows = [_row_from_record(r) for r in dump.exemplars]
        self._run_add(
            target,
            rows,
            dump.images,
            fingerprint=dump.fingerprint,
            dim=dump.embed_dim,
            mode="replace" if overwrite else "replace_if_empty",
            kind="namespace_imported",
            create=True,
            idempotent=False,
            ns_created_at=dump.created_at,
        )
        return self.namespace_info(target)

    def reextract(
        self,
        ns: str,
        target: str,
        encode_fn: EncodeFn,
        new_fingerprint: str,
        *,
        overwrite: bool = False,
    ) -> NamespaceInfo:
        """Rebuild `ns` for a new model into `target` (may be `ns` itself) from stored images.

        encode_fn(image_bytes, region) -> (d,) embedding is the new model's prompt encoder.
        Ids, authors, notes and times are kept. Writes that land in the source meanwhile are
        picked up by re-reading until the source version holds still; only new exemplars are
        encoded again. In place, the swap is atomic and guarded by the version read.
        """
        validate_namespace(ns)
        validate_namespace(target)
        validate_fingerprint(new_fingerprint)
        cache: dict[str, bytes] = {}
        wrote = False
        for _attempt in range(_CONSISTENT_READ_ATTEMPTS):
            dump = self.dump_namespace(ns)
            if not dump.exemplars:
                raise InvalidInput(
                    f"namespace {ns!r} has no exemplars to re-extract; create {target!r} "
                    "with create_namespace(target, fingerprint, embed_dim)"
                )
            rows = self._reencode(dump, encode_fn, cache)
            in_place = target == ns
            mode = "replace" if (in_place or overwrite or wrote) else "replace_if_empty"
            version, _ = self._run_add(
                target,
                rows,
                dump.images,
                fingerprint=new_fingerprint,
                dim=len(rows[0].emb) // 4,
                mode=mode,
                kind="namespace_reextracted",
                create=True,
                idempotent=False,
                expected_version=dump.version if in_place else -1,
                ns_created_at=_now(),
            )
            if version < 0:
                continue  # in place and the namespace moved on: read again
            wrote = True
            if in_place or self.version(ns) == dump.version:
                return self.namespace_info(target)
        raise Conflict(f"namespace {ns!r} kept changing during re-extraction; try again")

    # ---- events -------------------------------------------------------------------------------

    def subscribe(
        self,
        callback: Callable[[StoreEvent], None],
        namespace: str | None = None,
        *,
        wait_s: float = 5.0,
    ) -> EventSubscription:
        """Call `callback` for every change event (one namespace, or all when None).

        Runs a daemon thread that reconnects with backoff and then delivers a `resync` event
        (changes may have been missed: refetch). Waits up to wait_s for the subscription to be
        active (0: do not wait; the service can start while Redis is still down).
        """
        if namespace is None:
            target, pattern = ALL_EVENTS_PATTERN, True
        else:
            target, pattern = events_channel(validate_namespace(namespace)), False
        sub = EventSubscription(self._client, target, pattern, callback, namespace, self._settings)
        sub.start()
        if wait_s > 0 and not sub.wait_ready(wait_s):
            sub.stop()
            raise StoreUnavailable(f"could not subscribe to events at {self._where} in {wait_s}s")
        return sub

    # ---- internals ----------------------------------------------------------------------------

    def _prepare(self, items: Sequence[NewExemplar]) -> tuple[list[_Row], dict[str, bytes]]:
        """Validate and serialise; duplicates inside one call collapse to the first."""
        rows: list[_Row] = []
        images: dict[str, bytes] = {}
        now = _now()
        for item in items:
            if not isinstance(item, NewExemplar):
                raise InvalidInput("add_exemplars takes NewExemplar items")
            validate_label(item.class_name, "class name")
            validate_label(item.author, "author")
            note = validate_note(item.note)
            if not isinstance(item.region, Region):
                raise InvalidInput("region must be a prompt_store.Region")
            data = item.image_bytes
            if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
                raise InvalidInput("image_bytes must be non-empty bytes")
            data = bytes(data)
            if len(data) > self._settings.max_image_bytes:
                raise InvalidInput(
                    f"image is {len(data)} bytes; the store keeps source images up to "
                    f"{self._settings.max_image_bytes} bytes (INSPECT_REDIS_MAX_IMAGE_BYTES)"
                )
            emb = embedding_to_bytes(item.embedding)
            ih = image_hash(data)
            images[ih] = data
            rows.append(
                _Row(
                    exemplar_id(ih, item.region, item.class_name),
                    item.class_name,
                    emb,
                    ih,
                    item.region.canonical_json(),
                    item.author,
                    now,
                    note,
                )
            )
        return rows, images

    def _run_add(
        self,
        ns: str,
        rows: list[_Row],
        images: dict[str, bytes],
        *,
        fingerprint: str,
        dim: int,
        mode: str,
        kind: str,
        create: bool,
        idempotent: bool,
        expected_version: int = -1,
        ns_created_at: str | None = None,
    ) -> tuple[int, str]:
        """Run the add script; returns (version, created flags). Version -1 means stale."""
        header = {
            "ns": ns,
            "fingerprint": fingerprint,
            "dim": dim,
            "now": ns_created_at or _now(),
            "mode": mode,
            "create": create,
            "expected_version": expected_version,
            "kind": kind,
            "n_images": len(images),
            "n_ex": len(rows),
        }
        args: list[str | bytes | int] = [json.dumps(header)]
        for h, data in images.items():
            args += [h, data]
        for row in rows:
            args += row.argv()
        reply = self._call(
            lambda: self._scripts.add(keys=[prefix(ns) + "meta"], args=args),
            idempotent=idempotent,
            what=f"writing to namespace {ns!r}",
        )
        status = _status(reply)
        if status == "ok":
            return int(reply[1]), _s(reply[2]) or ""
        if status == "stale":
            return -1, ""
        if status == "mismatch":
            raise ModelMismatch(ns, _s(reply[1]) or "", fingerprint, int(reply[2]), dim)
        if status == "not_empty":
            raise Conflict(
                f"namespace {ns!r} already has {int(reply[1])} exemplars; "
                "pass overwrite=True to replace it"
            )
        raise NotFound(f"namespace {ns!r} does not exist")

    def _rename_mapping(self, ns: str, old: str, new: str) -> dict[str, str]:
        """Old id -> new id for every exemplar of `old`, from one consistent read."""
        p = prefix(ns)

        def read() -> dict[str, str]:
            ids = [_s(i) or "" for i in self._client.zrange(p + "members:" + old, 0, -1)]
            pipe = self._client.pipeline(transaction=True)
            for i in ids:
                pipe.hmget(p + "ex:" + i, "image_hash", "region")
            mapping = {}
            for i, (ih, region) in zip(ids, pipe.execute(), strict=True):
                if ih is None:
                    continue  # removed meanwhile; the script will say stale
                mapping[i] = exemplar_id(_s(ih) or "", Region.from_json(_s(region) or ""), new)
            return mapping

        return self._call(read, idempotent=True, what=f"reading class {old!r} of {ns!r}")

    def _reencode(
        self, dump: NamespaceDump, encode_fn: EncodeFn, cache: dict[str, bytes]
    ) -> list[_Row]:
        rows = []
        for rec in dump.exemplars:
            if rec.id not in cache:
                cache[rec.id] = embedding_to_bytes(
                    encode_fn(dump.images[rec.image_hash], rec.region)
                )
            rows.append(_row_from_record(rec, cache[rec.id]))
        if len({len(r.emb) for r in rows}) != 1:
            raise InvalidInput("encode_fn returned embeddings of different dimensions")
        return rows

    def _read_exemplars(
        self, p: str, ids: list[str], dim: int, with_embeddings: bool
    ) -> list[ExemplarRecord]:
        pipe = self._client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(p + "ex:" + i)
        out = []
        for i, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append(_record(i, raw, dim, with_embeddings))
        return out

    def _read_images(self, p: str, hashes: list[str]) -> dict[str, bytes]:
        pipe = self._client.pipeline(transaction=False)
        for h in hashes:
            pipe.get(p + "img:" + h)
        return {h: bytes(d) for h, d in zip(hashes, pipe.execute(), strict=True) if d is not None}

    def _consistent(self, ns: str, read: Callable[[], tuple[int, T]], what: str) -> T:
        """Repeat a multi-round-trip read until the version did not move during it."""
        p = prefix(ns)
        for _attempt in range(_CONSISTENT_READ_ATTEMPTS):
            version, value = self._call(read, idempotent=True, what=what)
            after = self._call(lambda: self._client.get(p + "version"), idempotent=True, what=what)
            if int(after or 0) == version:
                return value
        raise Conflict(f"{what}: namespace {ns!r} kept changing; try again")

    @staticmethod
    def _require_meta(ns: str, meta: dict[bytes, bytes]) -> dict[str, str]:
        if not meta:
            raise NotFound(f"namespace {ns!r} does not exist")
        return {_s(k) or "": _s(v) or "" for k, v in meta.items()}

    def _call(self, fn: Callable[[], T], *, idempotent: bool, what: str) -> T:
        """Run fn, retrying with exponential backoff and jitter only when idempotent."""
        attempts = 1 + (self._settings.retries if idempotent else 0)
        for attempt in range(attempts):
            try:
                return fn()
            except redis.exceptions.AuthenticationError as exc:
                raise StoreUnavailable(
                    f"Redis at {self._where} refused our credentials while {what} ({exc}); "
                    "check INSPECT_REDIS_PASSWORD / INSPECT_REDIS_USERNAME or the URL"
                ) from exc
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if attempt + 1 >= attempts:
                    raise self._unavailable(exc, what, attempts, idempotent) from exc
                base = self._settings.retry_backoff_base * 2**attempt
                time.sleep(min(self._settings.retry_backoff_cap, base) * random.uniform(0.5, 1))
            except redis.exceptions.ResponseError as exc:
                raise self._response_error(exc, what) from exc
        raise AssertionError("unreachable")

    def _unavailable(
        self, exc: Exception, what: str, attempts: int, idempotent: bool
    ) -> StoreUnavailable:
        unsure = (
            ""
            if idempotent
            else (" The change may or may not have been applied; read the state before retrying.")
        )
        return StoreUnavailable(
            f"Redis at {self._where} is unreachable while {what} ({type(exc).__name__}: {exc}; "
            f"{attempts} attempt(s)). Check that redis-server is running and reachable from this "
            "host (INSPECT_REDIS_URL host/port, firewall), and for rediss:// the TLS settings "
            f"(INSPECT_REDIS_SSL_*).{unsure}"
        )

    def _response_error(self, exc: redis.exceptions.ResponseError, what: str) -> Exception:
        text = str(exc)
        if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return StoreUnavailable(
                f"Redis at {self._where} refused the request while {what} ({text}); check "
                "INSPECT_REDIS_PASSWORD / INSPECT_REDIS_USERNAME and the user's ACL"
            )
        if text.startswith(("OOM", "READONLY", "MISCONF", "BUSY")):
            return StoreUnavailable(
                f"Redis at {self._where} cannot accept writes while {what} ({text}); check its "
                "maxmemory, that the URL points at the primary, and its disk (persistence)"
            )
        return exc


def _record(eid: str, raw: dict[bytes, bytes], dim: int, with_embedding: bool) -> ExemplarRecord:
    """Decode an exemplar hash."""
    f = {k.decode(): v for k, v in raw.items()}
    note = f.get("note")
    return ExemplarRecord(
        id=eid,
        class_name=f["class"].decode(),
        image_hash=f["image_hash"].decode(),
        region=Region.from_json(f["region"].decode()),
        author=f["author"].decode(),
        created_at=f["created_at"].decode(),
        fingerprint=f["fingerprint"].decode(),
        note=note.decode() if note is not None else None,
        embedding=embedding_from_bytes(f["emb"], dim) if with_embedding else None,
    )


def _row_from_record(rec: ExemplarRecord, emb: bytes | None = None) -> _Row:
    """A stored record back into script arguments (import, re-extraction)."""
    if emb is None:
        if rec.embedding is None:
            raise InvalidInput(f"exemplar {rec.id} has no embedding")
        emb = embedding_to_bytes(rec.embedding)
    return _Row(
        rec.id,
        rec.class_name,
        emb,
        rec.image_hash,
        rec.region.canonical_json(),
        rec.author,
        rec.created_at,
        rec.note,
    )


class EventSubscription:
    """Background listener for change events; reconnects with backoff. Stop it with stop()."""

    def __init__(
        self,
        client: redis.Redis,
        target: str,
        pattern: bool,
        callback: Callable[[StoreEvent], None],
        namespace: str | None,
        settings: StoreSettings,
        ping_interval: float = 5.0,
    ) -> None:
        self._client = client
        self._target = target
        self._pattern = pattern
        self._callback = callback
        self._namespace = namespace
        self._settings = settings
        self._ping_interval = ping_interval
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"events:{target}", daemon=True)

    def start(self) -> None:
        """Start the listener thread."""
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the (re)subscription is active."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and join the thread."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        delay = self._settings.retry_backoff_base
        connected_before = False
        while not self._stop.is_set():
            pubsub = self._client.pubsub()
            try:
                self._listen(pubsub, resync=connected_before)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                log.warning("event subscription to %s lost; reconnecting", self._target)
            finally:
                if self._ready.is_set():  # it worked for a while: next outage starts afresh
                    connected_before = True
                    delay = self._settings.retry_backoff_base
                self._ready.clear()
                pubsub.close()
            if self._stop.wait(delay):
                break
            delay = min(self._settings.retry_backoff_cap, delay * 2)
        self._ready.clear()

    def _listen(self, pubsub: Any, resync: bool) -> None:
        if self._pattern:
            pubsub.psubscribe(self._target)
        else:
            pubsub.subscribe(self._target)
        last_seen = time.monotonic()
        last_ping = last_seen
        while not self._stop.is_set():
            msg = pubsub.get_message(timeout=0.2)
            now = time.monotonic()
            if msg is not None:
                last_seen = now
                self._handle(msg, resync)
                resync = resync and not self._ready.is_set()
            if now - last_ping > self._ping_interval:
                pubsub.ping()
                last_ping = now
            if now - last_seen > 3 * self._ping_interval:
                raise redis.exceptions.TimeoutError("no reply to pub/sub PING")

    def _handle(self, msg: dict[str, Any], resync: bool) -> None:
        kind = msg.get("type")
        if kind in ("subscribe", "psubscribe"):
            self._ready.set()
            if resync:
                self._deliver(StoreEvent(self._namespace, -1, "resync"))
        elif kind in ("message", "pmessage"):
            try:
                event = StoreEvent.from_json(msg["data"])
            except (ValueError, TypeError):
                log.warning("ignoring malformed event on %s: %r", self._target, msg["data"])
                return
            self._deliver(event)

    def _deliver(self, event: StoreEvent) -> None:
        try:
            self._callback(event)
        except Exception:  # a broken callback must not kill the listener
            log.exception("event callback failed for %s", event)
