"""Where the benchmark runs: an embedded S3 server it starts (moto or Ceph RadosGW), or a given endpoint.

Owns: the ``Target`` (endpoint, bucket, this run's own prefix, credentials, the environment for child
processes) and its whole life in ``open_target``: start the server or check the given bucket, and on exit
remove exactly what the run made: the embedded server and everything in it, or on someone else's endpoint
only this run's unique prefix. Must not: touch any other prefix, send real AWS credentials to an embedded
server (children get fixed local keys and no access to ~/.aws), or leave a server running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
from s3files_bench import sdk
from s3files_bench.errors import BenchError

log = logging.getLogger(__name__)

_DROPPED_ENV = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class Target:
    """One bucket and prefix on one S3 endpoint, and how to reach it (None: the standard AWS chain)."""

    server: str  # "moto", "rgw", or "endpoint" (given by the user)
    endpoint_url: str | None
    bucket: str
    prefix: str  # this run's own, unique, ending in "/"
    region: str
    access_key: str | None
    secret_key: str | None
    env: Mapping[str, str]  # the environment for child processes (the mounts, the transform runs)

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        return self.prefix + name


def _local_env(access_key: str, secret_key: str, region: str) -> dict[str, str]:
    """Child environment for an embedded server: its fixed keys, never the user's AWS config."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_DEFAULT_REGION=region,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def _check_bucket(client: Any, bucket: str, where: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except EndpointConnectionError:
        raise BenchError(f"cannot reach S3 at {where}; is the endpoint right and the server up?") from None
    except NoCredentialsError:
        raise BenchError(
            "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
        ) from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise BenchError(f"bucket {bucket} does not exist at {where}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise BenchError(
                f"access to bucket {bucket} at {where} denied ({code}); check credentials"
            ) from None
        raise BenchError(f"bucket {bucket} at {where}: {exc}") from None
    except BotoCoreError as exc:
        raise BenchError(f"cannot reach S3 at {where}: {exc}") from None


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment for the block, unless the user set it already."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


#: RSS of RadosGW's memstore OSD per byte stored, measured here (Ceph 16.2): about 1.5, plus ~1 GiB.
MEMSTORE_OVERHEAD = 1.6


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (the RGW daemons all name their work directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if text.encode() in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@contextlib.contextmanager
def _pinned(server_pids: list[int], say: Callable[[str], None]) -> Iterator[None]:
    """The embedded server on CPU 0, this process (and every child it starts: mounts, peers) on the rest.

    Why: on a small machine the server otherwise competes for the same cores as the client under test, so
    a client that spends more CPU per byte (a FUSE mount: two more copies than the SDK) is also charged
    the server's slowdown. Pinned, the server behaves like the separate machine it is in real use, and
    every variant (raw SDK, baseline, mounts) gets the same client CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not server_pids:
        say("note: --pin-server needs 2 CPUs and an embedded server; not pinned")
        yield
        return
    server_cpus, client_cpus = {cpus[0]}, set(cpus[1:])
    for pid in server_pids:
        for tid in _threads(pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, server_cpus)
    own = _threads(os.getpid())
    for tid in own:
        os.sched_setaffinity(tid, client_cpus)
    say(f"server pinned to CPU {cpus[0]}, the benchmark and its mounts to CPUs {','.join(map(str, cpus[1:]))}")
    try:
        yield
    finally:
        for tid in own:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, set(cpus))


def _check_memory(storage: int) -> None:
    """Refuse a run whose data would not fit in RAM (the OSD would be killed, or the machine would swap)."""
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return
    needed = storage * MEMSTORE_OVERHEAD + 2**30
    if needed > 0.8 * available:
        raise BenchError(
            f"this run would keep about {needed / 2**30:.0f} GiB in RadosGW's RAM (it frees deleted data only at "
            f"garbage collection, hours later) but only {available / 2**30:.0f} GiB is available; use a "
            "smaller --size, or fewer --workloads or --peers per run"
        )


@contextlib.contextmanager
def _embedded(
    server: str, storage: int, say: Callable[[str], None], pin: bool = False
) -> Iterator[tuple[str, str, str]]:
    """(endpoint_url, access_key, secret_key) of a server started for the block, stopped after it; with
    ``pin``, the server and this process on separate CPUs (``_pinned``).

    RadosGW's OSD keeps objects in RAM and frees deleted data only at garbage collection, hours later, so
    its capacity (rgw.sh reads RGW_MEMSTORE_BYTES) must hold everything the run writes: ``storage``.
    """
    if server == "moto":
        from s3files.localserver import MotoServerError, start_moto_server

        say("starting moto's S3 server")
        try:
            moto = start_moto_server()
        except MotoServerError as exc:
            raise BenchError(f"moto's S3 server did not start: {str(exc).splitlines()[0]}") from None
        try:
            with _pinned([moto.pid], say) if pin else contextlib.nullcontext():
                yield moto.endpoint_url, "testing", "testing"
        finally:
            moto.stop()
    else:
        from s3files.rgwserver import RgwServer

        capacity = max(8 * 2**30, storage + 2 * 2**30)
        _check_memory(storage)
        say(
            f"starting Ceph RadosGW (installs Ceph with apt on first use, ~1 min); up to {storage / 2**30:.1f} GiB"
        )
        try:
            with _env_default("RGW_MEMSTORE_BYTES", str(capacity)):
                rgw = RgwServer.start()
        except RuntimeError as exc:
            raise BenchError(f"Ceph RadosGW did not start: {str(exc).splitlines()[0]}") from None
        try:
            with _pinned(_pids_mentioning(str(rgw.workdir)), say) if pin else contextlib.nullcontext():
                yield rgw.endpoint_url, rgw.access_key, rgw.secret_key
        finally:
            try:
                rgw.stop()
            except RuntimeError as exc:
                log.warning("stopping RadosGW: %s", str(exc).splitlines()[0])


@contextlib.contextmanager
def open_target(
    server: str,
    endpoint_url: str | None,
    bucket: str | None,
    region: str | None,
    storage: int,
    say: Callable[[str], None],
    pin: bool = False,
) -> Iterator[Target]:
    """The run's Target for the block; on exit everything the run created is removed.

    With neither ``endpoint_url`` nor ``bucket``: an embedded ``server`` ("moto" or "rgw") with a new
    bucket (``storage``: the bytes the run will write, deletions included). Otherwise the given bucket (AWS when ``endpoint_url`` is None) through the standard credential
    chain, and only a fresh ``s3files-bench-<id>/`` prefix in it is written and then deleted.
    """
    prefix = f"s3files-bench-{uuid.uuid4().hex[:10]}/"
    if endpoint_url is None and bucket is None:
        region = region or "us-east-1"
        with _embedded(server, storage, say, pin) as (url, access_key, secret_key):
            target = Target(
                server=server,
                endpoint_url=url,
                bucket=f"s3files-bench-{uuid.uuid4().hex[:8]}",
                prefix=prefix,
                region=region,
                access_key=access_key,
                secret_key=secret_key,
                env=_local_env(access_key, secret_key, region),
            )
            client = sdk.make_client(target)
            try:
                client.create_bucket(Bucket=target.bucket)
            except (BotoCoreError, ClientError) as exc:
                raise BenchError(f"cannot create a bucket on the {server} server: {exc}") from None
            yield target
        return
    if bucket is None:
        raise BenchError("--endpoint-url needs --bucket (the run writes only its own prefix in that bucket)")
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    region = region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    env["AWS_DEFAULT_REGION"] = region
    target = Target("endpoint", endpoint_url, bucket, prefix, region, None, None, env)
    client = sdk.make_client(target)
    _check_bucket(client, bucket, endpoint_url or "AWS")
    try:
        yield target
    finally:
        say(f"deleting {target.source}")
        try:
            sdk.delete_prefix(client, bucket, prefix)
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not delete %s: %s", target.source, exc)
            say(f"warning: could not delete {target.source}: {exc}")
