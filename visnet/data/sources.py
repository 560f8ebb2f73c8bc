"""Find the real product images installed from Debian packages and give each a retail category.

Sources (see SPEC.md, "Data available"): `openclipart-png` clip art, `tuxpaint-stamps-default`
stamps (PNG, and SVG rendered with `rsvg-convert` when it is installed), and real photos for street
backgrounds from `mate-backgrounds` and the scikit-image / scikit-learn wheels.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
MATE_NATURE_DIR = Path("/usr/share/backgrounds/mate/nature")
DEBIAN_PACKAGES = ("openclipart-png", "tuxpaint-stamps-default", "mate-backgrounds", "librsvg2-bin")

LICENSES = {
    "openclipart-png": "Public domain (Open Clip Art Library); Debian package openclipart-png.",
    "tuxpaint-stamps-default": "GPL-2.0-or-later (Tux Paint stamps); Debian package "
    "tuxpaint-stamps-default. Derived images in this folder are distributed under the same terms.",
    "mate-backgrounds": "GPL-2.0-or-later and CC licences as listed in Debian's "
    "/usr/share/doc/mate-backgrounds/copyright.",
    "scikit-image": "scikit-image sample images: public domain or CC0/CC-BY as listed in "
    "skimage/data/README.txt.",
    "scikit-learn": "scikit-learn sample images china.jpg and flower.jpg: CC-BY 2.0 (see "
    "sklearn/datasets/images/README.txt).",
}

# Ordered: the first rule whose keyword matches a word of the file name or description wins.
# Words match whole tokens or token prefixes of four letters or more ("shoes" matches "shoe").
KEYWORD_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("eyewear", ("glasses", "sunglasses", "spectacles", "goggles", "monocle")),
    (
        "shoes",
        (
            "shoe",
            "shoes",
            "boot",
            "boots",
            "sandal",
            "sandals",
            "sneaker",
            "highheel",
            "heel",
            "slipper",
            "thongs",
            "flipflop",
            "skate",
            "pattino",
        ),
    ),
    (
        "hats",
        (
            "hat",
            "hats",
            "cap",
            "fedora",
            "sombrero",
            "tophat",
            "beret",
            "helmet",
            "hardhat",
            "crown",
            "turban",
            "mortarboard",
            "bonnet",
            "beanie",
            "wizardhat",
            "elfhat",
            "brownhat",
            "greenhat",
            "purplehat",
        ),
    ),
    (
        "bags",
        (
            "bag",
            "bags",
            "handbag",
            "purse",
            "backpack",
            "suitcase",
            "tote",
            "valigie",
            "borsa",
            "briefcase",
            "wallet",
            "luggage",
        ),
    ),
    ("dresses-skirts", ("dress", "skirt", "gown", "bikini", "swimsuit", "tutu")),
    (
        "trousers",
        (
            "pants",
            "jeans",
            "trousers",
            "shorts",
            "bellbottoms",
            "pantyhose",
            "leggings",
            "bluejeans",
        ),
    ),
    ("outerwear", ("jacket", "coat", "raincoat", "parka", "hoodie", "cardigan", "poncho")),
    (
        "tops",
        (
            "shirt",
            "tshirt",
            "t-shirt",
            "poloshirt",
            "blouse",
            "sweater",
            "camicia",
            "jersey",
            "vest",
            "top",
        ),
    ),
    (
        "jewelry-accessories",
        (
            "ring",
            "rings",
            "earring",
            "necklace",
            "bracelet",
            "jewel",
            "jewelry",
            "chain",
            "watch",
            "wristwatch",
            "tie",
            "bowtie",
            "umbrella",
            "glove",
            "mitten",
            "scarf",
            "sock",
            "belt",
            "clotheshanger",
            "clothespin",
            "diamond",
            "pearl",
            "brooch",
        ),
    ),
]

# Folders of symbols, icons and scenes: never products, whatever their file names say.
EXCLUDED_FOLDERS = (
    "shapes",
    "special",
    "computer/buttons",
    "computer/icons",
    "computer/diagrams",
    "computer/network",
    "signs_and_symbols",
    "geography",
    "logos",
    "symbols",
    "transportation",
    "town",
    "recreation/games/cards/",
    "people/stickmen",
    "people/smilies",
    "people/bodypart",
    "buildings/homes",
    "space",
    "military",
)

# Folder prefix (relative, '/'-separated) -> category, for images no keyword placed.
FOLDER_RULES: list[tuple[str, str | None]] = [
    ("people/clothing/hats", "hats"),
    ("people/clothing/pantyhose", "trousers"),
    ("people/clothing/jewelry", "jewelry-accessories"),
    ("people/clothing", "jewelry-accessories"),
    ("clothes", "jewelry-accessories"),
    ("computer/hardware", "electronics"),
    ("electronics", "electronics"),
    ("household/electronics", "electronics"),
    ("office/telephone", "electronics"),
    ("recreation/music", "music"),
    ("hobbies/music", "music"),
    ("food", "food"),
    ("household/dishes", "kitchen"),
    ("containers", "home"),
    ("buildings/furniture", "home"),
    ("decorations", "home"),
    ("recreation/holiday", "home"),
    ("seasonal", "home"),
    ("recreation/party", "home"),
    ("plants/flowers", "home"),
    ("office", "stationery"),
    ("education/books", "stationery"),
    ("household/arttools", "stationery"),
    ("recreation/art", "stationery"),
    ("tools/weapons", None),
    ("tools", "tools"),
    ("household/tools", "tools"),
    ("science", "tools"),
    ("medical", "tools"),
    ("household", "home"),
    ("recreation/toys", "toys-sports"),
    ("people/toys", "toys-sports"),
    ("recreation/sports", "toys-sports"),
    ("sports", "toys-sports"),
    ("recreation/games", "toys-sports"),
    ("animals/mammals/bears/toys", "toys-sports"),
]

KITCHEN_WORDS = (
    "cup",
    "mug",
    "teapot",
    "kettle",
    "pot",
    "pan",
    "plate",
    "bowl",
    "fork",
    "knife",
    "spoon",
    "bottle",
    "teacup",
    "jar",
    "tazza",
    "teiera",
    "caffettiera",
    "toaster",
    "blender",
    "utensil",
    "kitchen",
    "ladle",
    "whisk",
    "grater",
    "colander",
)
FASHION = (
    "tops",
    "trousers",
    "dresses-skirts",
    "outerwear",
    "shoes",
    "hats",
    "bags",
    "eyewear",
    "jewelry-accessories",
)


@dataclass(frozen=True)
class SourceImage:
    """One installed image that can become a product."""

    path: Path
    package: str
    category: str
    title: str


def words_of(text: str) -> list[str]:
    """Lower-case word tokens of a file stem or description ('t-shirt' stays one token too)."""
    text = text.lower()
    tokens = re.findall(r"[a-z]+(?:-[a-z]+)?", text)
    parts = [p for t in tokens for p in t.split("-")]
    return tokens + parts


def categorise(relative_folder: str, words: list[str]) -> str | None:
    """The retail category of an image from its folder and the words of its name."""
    if any(relative_folder.startswith(x) for x in EXCLUDED_FOLDERS):
        return None
    for category, keywords in KEYWORD_RULES:
        if any(_matches(word, keywords) for word in words):
            return category
    for prefix, folder_category in FOLDER_RULES:
        if relative_folder == prefix or relative_folder.startswith(prefix + "/"):
            if folder_category in ("home", "stationery", "tools", "food") and any(
                _matches(w, KITCHEN_WORDS) for w in words
            ):
                return "kitchen"
            return folder_category
    if any(_matches(w, KITCHEN_WORDS) for w in words):
        return "kitchen"
    return None


def _matches(word: str, keywords: tuple[str, ...]) -> bool:
    return word in keywords or (
        len(word) >= 5 and any(word.startswith(k) and len(k) >= 4 for k in keywords)
    )


def _title(stem: str, description: str | None) -> str:
    if description:
        return description.strip().rstrip(".")[:120]
    stem = re.sub(r"(_\d+|_[a-z])$", "", stem)
    words = [w for w in re.split(r"[_\-\s]+", stem) if w and not w.isdigit()]
    return " ".join(words[:6]).capitalize() or stem


def _tuxpaint_description(path: Path) -> str | None:
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return None
    try:
        first = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return first[0] if first and "=" not in first[0] else None


def find_sources(
    openclipart: Path = OPENCLIPART_DIR, tuxpaint: Path = TUXPAINT_DIR
) -> list[SourceImage]:
    """Every installed image that maps to a retail category, in a stable order."""
    found: list[SourceImage] = []
    for root, package, patterns in (
        (openclipart, "openclipart-png", ("*.png",)),
        (tuxpaint, "tuxpaint-stamps-default", ("*.png", "*.svg")),
    ):
        if not root.is_dir():
            continue
        for pattern in patterns:
            if pattern == "*.svg" and shutil.which("rsvg-convert") is None:
                continue
            for path in sorted(root.rglob(pattern)):
                if pattern == "*.svg" and path.with_suffix(".png").exists():
                    continue  # the stamp ships as PNG too: one copy is enough
                found.extend(_classify(root, package, path))
    return found


def _classify(root: Path, package: str, path: Path) -> list[SourceImage]:
    folder = path.parent.relative_to(root).as_posix()
    description = _tuxpaint_description(path) if package.startswith("tuxpaint") else None
    words = words_of(path.stem) + words_of(description or "")
    category = categorise(folder, words)
    if category is None:
        return []
    return [SourceImage(path, package, category, _title(path.stem, description))]


def missing_packages() -> list[str]:
    """Debian packages the demo builder needs that are not installed."""
    checks = {
        "openclipart-png": OPENCLIPART_DIR,
        "tuxpaint-stamps-default": TUXPAINT_DIR,
        "mate-backgrounds": MATE_NATURE_DIR,
    }
    missing = [name for name, path in checks.items() if not path.is_dir()]
    if shutil.which("rsvg-convert") is None:
        missing.append("librsvg2-bin")
    return missing


# The real photographs scikit-image and scikit-learn ship that show a product a catalog could
# hold (`coffee`: a cup) or are held out as real-photo queries in the report (all six): never used
# as street backgrounds, so the cup in `coffee` is not taught as background and the report's
# real-photo searches stay honest.
REAL_PHOTO_QUERIES = (
    ("scikit-image", "coffee.png"),
    ("scikit-image", "chelsea.png"),
    ("scikit-image", "astronaut.png"),
    ("scikit-image", "rocket.jpg"),
    ("scikit-learn", "china.jpg"),
    ("scikit-learn", "flower.jpg"),
)
BACKGROUND_EXTRAS = ("motorcycle_left.png", "motorcycle_right.png")  # scikit-image, no products


def sample_photo_dirs() -> dict[str, Path]:
    """Where scikit-image's and scikit-learn's sample photos are installed."""
    import skimage
    import sklearn

    return {
        "scikit-image": Path(skimage.__file__).parent / "data",
        "scikit-learn": Path(sklearn.__file__).parent / "datasets" / "images",
    }


def real_photo_queries() -> list[Path]:
    """The real photographs used as search queries in the report (never as backgrounds)."""
    dirs = sample_photo_dirs()
    return [dirs[pkg] / name for pkg, name in REAL_PHOTO_QUERIES if (dirs[pkg] / name).is_file()]


def background_photos() -> list[tuple[Path, str]]:
    """Real photos to composite street scenes onto, with the package each came from."""
    photos = [(p, "mate-backgrounds") for p in sorted(MATE_NATURE_DIR.glob("*.jpg"))]
    sk = sample_photo_dirs()["scikit-image"]
    photos.extend((sk / n, "scikit-image") for n in BACKGROUND_EXTRAS if (sk / n).is_file())
    return photos
