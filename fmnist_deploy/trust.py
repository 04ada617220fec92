"""Which model files may run code: TorchScript, .pt2 and AOTInductor files load only when trusted.

Those formats carry code by design (TorchScript's `__setstate__` and scripted methods, the
expressions and operator names of a .pt2 graph, an AOTInductor package's compiled library;
PyTorch says not to load them from untrusted sources). One of these must hold, checked on the
bytes that will be loaded, before torch reads them:

1. the file is signed (OpenSSF `model-signing`, an elliptic-curve key, offline) and its signature
   `<file>.sig` verifies against a public key the user trusts (`--trusted-key`, FMNIST_TRUSTED_KEY);
2. its sha256 is one the user pinned (`--pin-sha256`);
3. the user said so (`--trust-code`);

or the file is one of the model files packaged with the toolkit (their sha256 are listed in the
package's `trusted.json`, written by `fmnist-export`). ONNX files and `.pt` weights are data, read
without running code, and need none of this.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fmnist_deploy.errors import IntegrityError
from fmnist_deploy.kinds import KINDS

CODE_KINDS = {k.name: k.description for k in KINDS if k.code}  # kind -> how messages name it (fmnist_deploy.kinds)
SIGNATURE_SUFFIX = ".sig"
TRUSTED_KEY_VARIABLE = "FMNIST_TRUSTED_KEY"  # a public key file (or several, separated by the path separator)
MANIFEST_NAME = "trusted.json"  # in the package's model folder: sha256 of the packaged code-carrying files


class UntrustedCode(IntegrityError):
    """A file that can run code when loaded, with nothing saying the user trusts it."""


@dataclass(frozen=True)
class Trust:
    """What the user trusts: public keys whose signatures count, pinned sha256 digests, or every file."""

    keys: tuple[Path, ...] = ()
    pinned: frozenset[str] = field(default_factory=frozenset)
    code: bool = False  # --trust-code: load code-carrying files without a signature or pin

    @classmethod
    def from_options(cls, keys: tuple[Path, ...] = (), pinned: tuple[str, ...] = (), code: bool = False) -> Trust:
        """From the command-line options; a pin must be 64 hex digits."""
        digests = set()
        for pin in pinned:
            digest = pin.strip().lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"--pin-sha256 {pin!r}: expected 64 hexadecimal digits")
            digests.add(digest)
        return cls(tuple(Path(k) for k in keys), frozenset(digests), code)


def signature_path(model_path: Path) -> Path:
    """Where a model file's signature lives: `<file>.sig`."""
    return model_path.with_name(model_path.name + SIGNATURE_SUFFIX)


@cache
def packaged_digests() -> frozenset[str]:
    """sha256 of the code-carrying model files shipped in the package (empty when the manifest is absent)."""
    from fmnist_deploy.bounds import MAX_SIDECAR_BYTES, read_regular
    from fmnist_deploy.models import models_dir

    manifest = models_dir() / MANIFEST_NAME
    if not manifest.is_file():
        return frozenset()
    try:
        files = json.loads(read_regular(manifest, MAX_SIDECAR_BYTES, "manifest"))["files"]
        return frozenset(str(entry["sha256"]) for entry in files.values())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{manifest}: damaged manifest of the packaged model files ({exc})") from None


def manifest_text(files: dict[str, str]) -> str:
    """The packaged manifest's JSON for {file name: sha256} (sorted: the same files give the same bytes)."""
    entries = {name: {"sha256": digest} for name, digest in sorted(files.items())}
    return json.dumps({"files": entries}, indent=2, sort_keys=True) + "\n"


def require_trusted(path: Path, data: bytes, kind: str, trust: Trust) -> str:
    """Return why `data` (the bytes of `path`, about to be loaded) is trusted; raise UntrustedCode if it is not.

    Data formats (ONNX, .pt weights) pass. The decision is about these bytes: a file swapped
    after this check is never the one loaded, since the loader reads the same bytes.
    """
    if kind not in CODE_KINDS:
        return "data format"
    digest = hashlib.sha256(data).hexdigest()
    if trust.code:
        return "--trust-code"
    if digest in trust.pinned:
        return "pinned sha256"
    if digest in packaged_digests():
        return "packaged with the toolkit"
    signature = signature_path(path)
    if trust.keys and signature.exists():
        return f"signed, verified with {verify_signature(path, data, signature, trust.keys)}"
    problem = "" if not trust.keys else f" ({signature.name} absent)"
    raise UntrustedCode(
        f"{path}: {CODE_KINDS[kind]} runs code when loaded and is not trusted{problem}; load it only if you trust "
        "it: sign it (fmnist-export --sign KEY) and pass --trusted-key PUB (or set "
        f"{TRUSTED_KEY_VARIABLE}), pin its sha256 with --pin-sha256 {digest}, or pass --trust-code"
    )


def verify_signature(path: Path, data: bytes, signature: Path, keys: tuple[Path, ...]) -> Path:
    """The trusted key whose signature `signature` verifies for `data`; raise UntrustedCode if none does.

    model-signing reads the file it verifies, so it verifies a private copy of `data`: the bytes
    checked are the bytes loaded.
    """
    from fmnist_deploy.bounds import MAX_SIDECAR_BYTES, read_regular

    bundle = read_regular(signature, MAX_SIDECAR_BYTES, "signature")
    reasons = []
    with tempfile.TemporaryDirectory(prefix="fmnist-verify-") as scratch:
        copy, sig = Path(scratch) / path.name, Path(scratch) / signature.name
        copy.write_bytes(data)
        sig.write_bytes(bundle)
        for key in keys:
            if not key.is_file():
                raise UntrustedCode(f"{key}: no such public key file (--trusted-key / {TRUSTED_KEY_VARIABLE})")
            try:
                _verifier(key).verify(copy, sig)
            except Exception as exc:  # noqa: BLE001 - model-signing reports a bad signature through many types
                reasons.append(f"{key.name}: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}")
                continue
            return key
    raise UntrustedCode(
        f"{path}: its signature {signature.name} does not verify against any trusted key ({'; '.join(reasons)})"
    )


def _verifier(key: Path):
    import model_signing

    try:
        return model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key)
    except (ValueError, TypeError) as exc:
        raise UntrustedCode(f"{key}: not an elliptic-curve public key in PEM form ({exc})") from None


def sign_file(path: Path, private_key: Path) -> Path:
    """Sign `path` with an elliptic-curve private key (PEM); write and return `<file>.sig`."""
    import model_signing

    signature = signature_path(path)
    tmp = signature.with_name(f".{signature.name}.{os.getpid()}.tmp")
    try:
        model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key).sign(path, tmp)
        os.replace(tmp, signature)
    finally:
        tmp.unlink(missing_ok=True)
    return signature


def keys_from_environment(value: str | None) -> tuple[Path, ...]:
    """The public keys FMNIST_TRUSTED_KEY names (read by the commands, never deep in the library)."""
    return tuple(Path(p) for p in (value or "").split(os.pathsep) if p)


__all__ = [
    "CODE_KINDS",
    "MANIFEST_NAME",
    "SIGNATURE_SUFFIX",
    "TRUSTED_KEY_VARIABLE",
    "Trust",
    "UntrustedCode",
    "keys_from_environment",
    "manifest_text",
    "packaged_digests",
    "require_trusted",
    "sign_file",
    "signature_path",
]


def trust_options(command=None, *, code_aliases: tuple[str, ...] = ()):
    """The three ways to trust a code-carrying model file, as options of a click command.

    The command receives `trust` (a Trust); FMNIST_TRUSTED_KEY adds keys, read here at the edge.
    `code_aliases`: old spellings of --trust-code, hidden from --help (`@trust_options(code_aliases=...)`).
    """
    import functools

    import click

    from fmnist_deploy.options import Option

    if command is None:
        return functools.partial(trust_options, code_aliases=code_aliases)

    @click.option(
        "--trusted-key",
        "trusted_keys",
        multiple=True,
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        envvar=TRUSTED_KEY_VARIABLE,
        help="A public key (PEM, elliptic curve) whose model-signing signature <file>.sig makes a TorchScript / "
        f".pt2 / AOTInductor file trusted; repeatable; also ${TRUSTED_KEY_VARIABLE}.",
    )
    @click.option(
        "--pin-sha256",
        "pinned",
        multiple=True,
        metavar="HEX",
        help="Trust the code-carrying model file with this sha256; repeatable.",
    )
    @click.option(
        "--trust-code",
        "trust_code",
        cls=Option,
        aliases=code_aliases,
        is_flag=True,
        help="Load a TorchScript / .pt2 / AOTInductor file without a signature or pin: it runs code when loaded.",
    )
    @functools.wraps(command)
    def wrapper(*args, trusted_keys: tuple[Path, ...], pinned: tuple[str, ...], trust_code: bool, **kwargs):
        try:
            trust = Trust.from_options(tuple(trusted_keys), pinned, trust_code)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--pin-sha256") from None
        return command(*args, trust=trust, **kwargs)

    return wrapper
