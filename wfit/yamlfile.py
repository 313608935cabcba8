"""The one YAML reader of wfit's input files (calibration configs, data.yaml, transform.yaml, feature sidecars,
dask configs): PyYAML's safe loader, except that a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a config with ``epochs`` written twice trains with
whichever comes last; here that is a :class:`DuplicateKeyError` naming the file, the key and both lines. Merge
keys (``<<: *anchor``) may still be overridden, as YAML intends.

Example:
    >>> import io
    >>> safe_load(io.StringIO("a: 1\\nb: 2\\n"))
    {'a': 1, 'b': 2}
    >>> safe_load(io.StringIO("train:\\n  epochs: 2\\n  epochs: 3\\n"), source="calib.yaml")
    Traceback (most recent call last):
    ...
    wfit.yamlfile.DuplicateKeyError: calib.yaml: key 'epochs' is given twice in one mapping (lines 2 and 3); keep one
"""

from __future__ import annotations

from typing import IO, Any

import yaml

__all__ = ["DuplicateKeyError", "safe_load"]


class DuplicateKeyError(yaml.YAMLError, ValueError):
    """A key given twice in one YAML mapping (a ``yaml.YAMLError`` and a ``ValueError``)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    source = "<string>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKeyError(
                    f"{self.source}: key {key!r} is given twice in one mapping (lines {first} and {line}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def safe_load(stream: str | IO[str], source: str | None = None) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys.

    Args:
        stream: YAML text or an open text file.
        source: The file's name for messages (default: the stream's ``name``, else ``<string>``).

    Raises:
        DuplicateKeyError: A key given twice in one mapping.
        yaml.YAMLError: Not YAML (PyYAML's message, with line and column).
    """
    loader = _UniqueKeyLoader(stream)
    loader.source = source if source is not None else str(getattr(stream, "name", "<string>"))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
