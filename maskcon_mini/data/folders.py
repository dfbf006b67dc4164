"""Image-folder datasets: a nested ``<coarse>/<fine>/`` tree, or flat ``<fine>/`` folders plus a mapping file.

Layouts, under ``root`` or under ``root/<split>/`` when ``root`` has a ``train/`` or
``test/`` subfolder:

- nested: ``<coarse>/<fine>/<images>``
- flat: ``<fine>/<images>`` with a JSON or CSV file that maps each fine class to its
  coarse class. It is the ``mapping_file`` argument, or else ``root/fine_to_coarse.json``
  or ``root/fine_to_coarse.csv`` when one exists.

Class lists are built from every split folder present, so train and test share one label
numbering. Coarse and fine classes are numbered in sorted name order. Only image files
directly inside a fine class folder are read, and hidden files and folders are skipped.
"""

import csv
import json
import warnings
from pathlib import Path

import numpy as np

from .base import IMAGE_EXTENSIONS, HierarchicalDataset, list_image_files
from .errors import EmptyClassFolderError, HierarchyError, MappingFileError
from .paths import SPLITS, missing_data_error

MAPPING_FILE_NAMES = ("fine_to_coarse.json", "fine_to_coarse.csv")

LAYOUT = (
    "<root>/<coarse class>/<fine class>/<images>                 (nested), or\n"
    "<root>/<fine class>/<images> plus a fine-to-coarse mapping file (flat, JSON or CSV).\n"
    "<root> may instead contain train/ and test/ subfolders, each with this layout"
)


def load_image_folder(root: Path, split: str, mapping_file: str | Path | None = None) -> HierarchicalDataset:
    """Load one split of an image-folder tree with coarse and fine labels.

    When ``root`` has a ``train/`` or ``test/`` subfolder, ``root/<split>/`` is read.
    Otherwise ``root`` is a single split and serves both "train" and "test", with a
    UserWarning for "test".

    Args:
        root: The image folder itself.
        split: "train" or "test".
        mapping_file: JSON or CSV fine-to-coarse mapping for the flat layout. When None,
            ``root/fine_to_coarse.json`` or ``.csv`` is used if present, and otherwise the
            nested layout is read.

    Raises:
        FileNotFoundError: ``root``, the split folder or the mapping file does not exist.
        EmptyClassFolderError: A class folder of the split contains no images.
        HierarchyError: A fine class appears under two coarse classes.
        MappingFileError: The mapping file is malformed or lacks a fine class folder.
    """
    if not root.is_dir():
        raise missing_data_error("Image folder", root, LAYOUT, downloadable=False)
    split_roots = _split_roots(root, split)
    mapping_path = _find_mapping_file(root, mapping_file)

    if mapping_path is None:
        mapping = _scan_nested_classes(split_roots.values())
    else:
        mapping = read_mapping_file(mapping_path)
        _check_flat_folders(split_roots.values(), mapping, mapping_path)

    coarse_classes = sorted(set(mapping.values()))
    fine_classes = sorted(mapping)
    table = [coarse_classes.index(mapping[fine]) for fine in fine_classes]

    fine_folders = _fine_folders(split_roots[split], nested=mapping_path is None)
    paths, fine = [], []
    for fine_name in fine_classes:
        folder = fine_folders.get(fine_name)
        if folder is None:
            continue
        files = list_image_files(folder)
        if not files:
            raise EmptyClassFolderError(
                f"class folder {folder} contains no image files (accepted extensions: "
                f"{', '.join(IMAGE_EXTENSIONS)}, and subfolders are not searched). "
                "Add images or delete the folder."
            )
        paths.extend(files)
        fine.extend([fine_classes.index(fine_name)] * len(files))

    fine = np.asarray(fine, dtype=np.int64)
    return HierarchicalDataset(
        name="imagefolder",
        split=split,
        coarse_classes=coarse_classes,
        fine_classes=fine_classes,
        fine_to_coarse=table,
        coarse_targets=np.asarray(table, dtype=np.int64)[fine],
        fine_targets=fine,
        paths=paths,
    )


def read_mapping_file(path: Path) -> dict[str, str]:
    """Read a fine-to-coarse mapping from a JSON or CSV file.

    JSON is either an object ``{"fine": "coarse", ...}`` or an object of lists
    ``{"coarse": ["fine", ...], ...}``. CSV has two columns, fine then coarse, and an
    optional header row ``fine,coarse``.

    Returns:
        A dict from fine class name to coarse class name.

    Raises:
        FileNotFoundError: The file does not exist.
        MappingFileError: The suffix is not .json or .csv, or the content is malformed or empty.
        HierarchyError: One fine class is mapped to two coarse classes.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"mapping file {path} does not exist (resolved to {path.resolve()}; a relative path is "
            "read from the current directory). Pass mapping_file= (--mapping-file) the path of a "
            "JSON or CSV file."
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        pairs = _read_json_pairs(path)
    elif suffix == ".csv":
        pairs = _read_csv_pairs(path)
    else:
        raise MappingFileError(f"unsupported mapping file {path}: the suffix {suffix!r} is not '.json' or '.csv'")

    mapping: dict[str, str] = {}
    for fine, coarse in pairs:
        if mapping.get(fine, coarse) != coarse:
            raise HierarchyError(
                f"mapping file {path} puts fine class {fine!r} under two coarse classes, "
                f"{mapping[fine]!r} and {coarse!r}. Keep one of them."
            )
        mapping[fine] = coarse
    if not mapping:
        raise MappingFileError(f"mapping file {path} contains no fine-to-coarse pairs")
    return mapping


def _read_json_pairs(path: Path) -> list[tuple[str, str]]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MappingFileError(f"mapping file {path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise MappingFileError(f"mapping file {path} must contain a JSON object, got {type(content).__name__}")

    pairs = []
    for key, value in content.items():
        if isinstance(value, str):
            pairs.append((key, value))
        elif isinstance(value, list) and all(isinstance(fine, str) for fine in value):
            pairs.extend((fine, key) for fine in value)
        else:
            raise MappingFileError(
                f"mapping file {path}: the value of {key!r} is {value!r}, expected a coarse class "
                "name (fine -> coarse) or a list of fine class names (coarse -> fines)"
            )
    return pairs


def _read_csv_pairs(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))

    pairs = []
    for line_number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if line_number == 1 and [cell.lower() for cell in cells] == ["fine", "coarse"]:
            continue
        if len(cells) != 2 or not all(cells):
            raise MappingFileError(
                f"mapping file {path}, line {line_number}: expected two non-empty columns "
                f"'fine,coarse', got {row!r}"
            )
        pairs.append((cells[0], cells[1]))
    return pairs


def _split_roots(root: Path, split: str) -> dict[str, Path]:
    present = {name: root / name for name in SPLITS if (root / name).is_dir()}
    if not present:
        if split == "test":
            warnings.warn(
                f"{root} has no train/ or test/ subfolder, so split='test' reads the same images as split='train'",
                UserWarning,
                stacklevel=4,
            )
        return {split: root}
    if split not in present:
        raise missing_data_error(f"Image folder split {split!r}", root / split, LAYOUT, downloadable=False)
    return present


def _find_mapping_file(root: Path, mapping_file: str | Path | None) -> Path | None:
    if mapping_file is not None:
        return Path(mapping_file).expanduser()
    for name in MAPPING_FILE_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _fine_folders(split_root: Path, nested: bool) -> dict[str, Path]:
    if not nested:
        return {folder.name: folder for folder in _subfolders(split_root)}
    return {fine.name: fine for coarse in _subfolders(split_root) for fine in _subfolders(coarse)}


def _scan_nested_classes(split_roots) -> dict[str, str]:
    """Map every fine folder name to its coarse folder name across all split folders."""
    mapping: dict[str, str] = {}
    for split_root in split_roots:
        coarse_folders = _subfolders(split_root)
        if not coarse_folders:
            raise EmptyClassFolderError(f"{split_root} contains no class folders. Expected layout:\n{LAYOUT}")
        for coarse in coarse_folders:
            _check_nested_coarse_folder(coarse)
            for fine in _subfolders(coarse):
                known = mapping.setdefault(fine.name, coarse.name)
                if known != coarse.name:
                    raise HierarchyError(
                        f"fine class {fine.name!r} appears under two coarse classes, {known!r} and "
                        f"{coarse.name!r} (in {split_root}), but each fine class must belong to exactly "
                        "one coarse class. Rename one of the folders or merge them."
                    )
    return mapping


def _check_nested_coarse_folder(coarse: Path) -> None:
    if list_image_files(coarse):
        raise MappingFileError(
            f"{coarse} contains images directly, which is the flat layout <root>/<fine>/<images>. "
            "Pass mapping_file= (--mapping-file on the command line) a JSON or CSV fine-to-coarse "
            "mapping, save it as fine_to_coarse.json or fine_to_coarse.csv in the data root, or "
            "move the images into <root>/<coarse>/<fine>/ folders."
        )
    if not _subfolders(coarse):
        raise EmptyClassFolderError(f"coarse class folder {coarse} contains no fine class folders. Add them or delete the folder.")


def _check_flat_folders(split_roots, mapping: dict[str, str], mapping_path: Path) -> None:
    for split_root in split_roots:
        folders = _subfolders(split_root)
        if not folders:
            raise EmptyClassFolderError(f"{split_root} contains no class folders. Expected layout:\n{LAYOUT}")
        unmapped = [folder.name for folder in folders if folder.name not in mapping]
        if unmapped:
            listed = ", ".join(repr(name) for name in unmapped[:10])
            more = f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else ""
            raise MappingFileError(
                f"mapping file {mapping_path} has no coarse class for the fine class folders "
                f"{listed}{more} in {split_root}. Add a 'fine,coarse' entry for each. "
                f"It maps {len(mapping)} fine classes, for example {next(iter(mapping))!r}."
            )
