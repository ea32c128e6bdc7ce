#!/usr/bin/env python3
"""Writes an OCI image layout archive from a Containerfile and its context, with no container engine.

    oci-archive.py build CONTAINERFILE CONTEXT NAME OUT   write OUT, a tar `ctr images import` loads as NAME
    oci-archive.py hash  CONTAINERFILE CONTEXT NAME       print the hash of every input of `build`

No registry is reachable from the machines tether is tested on, and no container engine is installed, so
deploy/dev/images.sh builds its images with this. It understands a strict subset of the Containerfile
language, chosen so that buildah/podman build the same image from the same file: FROM scratch, COPY <src>
<dst> (from CONTEXT, no flags or wildcards), USER, ENTRYPOINT and CMD in JSON form, ENV and LABEL as
KEY=VALUE, WORKDIR. Anything else (RUN, ADD, ARG, `$` substitution, a second FROM) is an error naming its
line, rather than an image that differs from buildah's.

The output is deterministic (same inputs, same bytes, so the same digests): entries sorted, every mtime and
the config's `created` set to SOURCE_DATE_EPOCH (0 when unset), owner 0:0, modes taken from CONTEXT (so
/tmp keeps its 1777), one gzip layer holding all COPYs. Python's standard library only.
"""
import gzip
import hashlib
import io
import json
import os
import platform
import shlex
import stat
import sys
import tarfile
import time

KEYWORDS = "FROM scratch, COPY, USER, ENTRYPOINT, CMD, ENV, LABEL, WORKDIR"
# What buildah and docker put in the config of an image whose Containerfile sets no PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class Bad(Exception):
    """A Containerfile or context this writer refuses; the message names the place."""


def epoch():
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def instructions(path):
    """Yields (line, KEYWORD, argument): continuation lines joined, comments and blank lines dropped."""
    parts, start = [], None
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            # As in Docker, comment and empty lines inside a continuation are skipped, not ends of it.
            if not line or line.startswith("#"):
                continue
            start = start or n
            if line.endswith("\\"):
                parts.append(line[:-1])
                continue
            parts.append(line)
            text = " ".join(p.strip() for p in parts)
            keyword, argument = (text.split(None, 1) + [""])[:2]
            yield start, keyword.upper(), argument.strip()
            parts, start = [], None
    if parts:
        raise Bad(f"{path}:{start}: continuation runs past the end of the file")


class Layer:
    """The files of the one layer, by path without the leading slash."""

    def __init__(self):
        self.entries = {}

    def add_dir(self, path, mode=0o755, explicit=False):
        if not path:
            return
        current = self.entries.get(path)
        if current and current[0] != "dir":
            raise Bad(f"/{path} is a {current[0]} and a directory")
        if current and not explicit:
            return
        self.add_parents(path)
        self.entries[path] = ("dir", mode, None)

    def add_parents(self, path):
        parent = os.path.dirname(path)
        if parent:
            self.add_dir(parent)

    def add(self, path, source):
        """Adds `source` (file, symlink or directory of the context) at `path`."""
        st = os.lstat(source)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            return self.add_dir(path, mode, explicit=True)
        if stat.S_ISREG(st.st_mode):
            entry = ("file", mode, source)
        elif stat.S_ISLNK(st.st_mode):
            entry = ("symlink", 0o777, os.readlink(source))
        else:
            raise Bad(f"{source}: only files, directories and symlinks can be copied")
        current = self.entries.get(path)
        if current and current[0] == "dir":
            raise Bad(f"/{path} is a directory and a {entry[0]}")
        self.add_parents(path)
        self.entries[path] = entry

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, value = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.mtime = mode, epoch()
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, value
                    tar.addfile(info)
                else:
                    with open(value, "rb") as f:
                        data = f.read()
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def copy(layer, context, argument):
    args = argument.split()
    if len(args) != 2 or args[0].startswith("--"):
        raise Bad("COPY takes exactly <src> <dst>: no flags, one source")
    src, dst = args
    if any(c in src for c in "*?["):
        raise Bad("COPY wildcards are not supported")
    if not dst.startswith("/"):
        raise Bad("COPY destination must be absolute")
    source = os.path.normpath(os.path.join(context, src))
    if os.path.relpath(source, context).split(os.sep)[0] == "..":
        raise Bad(f"COPY source {src} is outside the context")
    if os.path.islink(source):
        raise Bad(f"COPY source {src} is a symlink (buildah would follow it; copy its directory instead)")
    if os.path.isdir(source):
        # Docker semantics: the directory's contents go into dst, subdirectories keep their own modes.
        base = dst.strip("/")
        layer.add_dir(base)
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(dirs + files):
                full = os.path.join(root, name)
                layer.add(os.path.join(base, os.path.relpath(full, source)), full)
    elif os.path.isfile(source):
        target = dst + os.path.basename(src) if dst.endswith("/") else dst
        layer.add(target.strip("/"), source)
    else:
        raise Bad(f"COPY source {src} not found in the context {context}")


def pairs(keyword, argument):
    """KEY=VALUE words, quoted as in a shell (Docker's rules for these forms)."""
    result = []
    for word in shlex.split(argument):
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise Bad(f"{keyword} takes KEY=VALUE pairs, got {word!r}")
        result.append((key, value))
    if not result:
        raise Bad(f"{keyword} needs at least one KEY=VALUE")
    return result


def exec_form(keyword, argument):
    try:
        value = json.loads(argument)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Bad(f'{keyword} must be in JSON form, e.g. {keyword} ["/bin/app", "arg"]')
    return value


def parse(containerfile, context):
    """The image config and layer a Containerfile describes."""
    layer, config, steps, env = Layer(), {}, [], {"PATH": DEFAULT_PATH}
    seen_from = False
    for line, keyword, argument in instructions(containerfile):
        try:
            if not seen_from:
                if keyword != "FROM" or argument.lower() != "scratch":
                    raise Bad("the first instruction must be FROM scratch")
                seen_from = True
                continue
            if keyword != "ENTRYPOINT" and keyword != "CMD" and "$" in argument:
                raise Bad("variable substitution ($) is not supported")
            if keyword == "COPY":
                copy(layer, context, argument)
            elif keyword == "USER":
                if len(argument.split()) != 1:
                    raise Bad("USER takes one user[:group]")
                config["User"] = argument
            elif keyword in ("ENTRYPOINT", "CMD"):
                config[keyword.capitalize()] = exec_form(keyword, argument)
            elif keyword == "ENV":
                env.update(pairs(keyword, argument))
            elif keyword == "LABEL":
                config.setdefault("Labels", {}).update(pairs(keyword, argument))
            elif keyword == "WORKDIR":
                if not argument.startswith("/") or len(argument.split()) != 1:
                    raise Bad("WORKDIR must be one absolute path")
                config["WorkingDir"] = argument
                layer.add_dir(os.path.normpath(argument).strip("/"))
            elif keyword == "FROM":
                raise Bad("a second FROM (multi-stage build) is not supported")
            else:
                raise Bad(f"{keyword} is not supported (only {KEYWORDS})")
            steps.append(f"{keyword} {argument}")
        except Bad as e:
            raise Bad(f"{containerfile}:{line}: {e}") from None
    if not seen_from:
        raise Bad(f"{containerfile}: no FROM scratch")
    config["Env"] = [f"{k}={v}" for k, v in env.items()]
    if not any(s.startswith("COPY ") for s in steps):
        raise Bad(f"{containerfile}: no COPY: the image would be empty")
    return config, layer, steps


def blob(blobs, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def build(containerfile, context, name, out):
    config, layer, steps = parse(containerfile, context)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch()))
    arch = ARCH.get(platform.machine(), platform.machine())
    tar = layer.tar()
    zipped = io.BytesIO()
    # No file name and mtime 0 in the gzip header: the same tar always compresses to the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=zipped, mtime=0, compresslevel=9) as g:
        g.write(tar)
    blobs = {}
    layer_digest, layer_size = blob(blobs, zipped.getvalue())
    # All COPYs are one layer, so exactly one history entry (the first COPY's) may say it made a layer.
    history = [{"created": created, "created_by": s, "empty_layer": True} for s in steps]
    first_copy = next(h for h in history if h["created_by"].startswith("COPY "))
    del first_copy["empty_layer"]
    first_copy["created_by"] += "  # with every later COPY: one layer"
    image_config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": history,
    }
    config_digest, config_size = blob(blobs, canonical(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": layer_size}],
    }
    manifest_digest, manifest_size = blob(blobs, canonical(manifest))
    # containerd names the image after io.containerd.image.name; ref.name is the tag, as `ctr export` writes.
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size, "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }
    files = {"oci-layout": canonical({"imageLayoutVersion": "1.0.0"}), "index.json": canonical(index)}
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch()
            t.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.size = 0o644, epoch(), len(files[path])
            t.addfile(info, io.BytesIO(files[path]))
    os.replace(tmp, out)
    print(f"{name}: {out} manifest {manifest_digest}, layer {layer_size} bytes gzip, {len(tar)} bytes tar")


def inputs_hash(containerfile, context, name):
    """Everything `build` reads: this writer, the name, SOURCE_DATE_EPOCH, the Containerfile, the context."""
    h = hashlib.sha256()

    def put(*values):
        for v in values:
            h.update(v if isinstance(v, bytes) else str(v).encode())
            h.update(b"\0")

    with open(__file__, "rb") as f:
        put(f.read())
    with open(containerfile, "rb") as f:
        put(name, epoch(), f.read())
    for root, dirs, files in os.walk(context):
        dirs.sort()
        for entry in sorted(dirs + files):
            full = os.path.join(root, entry)
            st = os.lstat(full)
            put(os.path.relpath(full, context), st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                put(os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    put(hashlib.sha256(f.read()).hexdigest())
    print(h.hexdigest())


def main(argv):
    if len(argv) == 6 and argv[1] == "build":
        build(*argv[2:])
    elif len(argv) == 5 and argv[1] == "hash":
        inputs_hash(*argv[2:])
    else:
        sys.exit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (Bad, OSError) as e:
        sys.exit(f"oci-archive: {e}")
