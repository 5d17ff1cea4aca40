"""The competition's class list and display colours (docs/competition.md, Classes and colours).

Labels are indices into the class list of the data config; index 0 is Background, which is
never a COCO category. Other datasets bring their own list through a data YAML.
"""

CLASSES: tuple[str, ...] = (
    "Background",
    "General trash",
    "Paper",
    "Paper pack",
    "Metal",
    "Glass",
    "Plastic",
    "Styrofoam",
    "Plastic bag",
    "Battery",
    "Clothing",
)

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (192, 0, 128),
    (192, 192, 255),
    (0, 128, 64),
    (128, 0, 0),
    (172, 224, 64),
    (244, 64, 60),
    (192, 128, 64),
    (255, 200, 224),
    (243, 246, 244),
    (128, 0, 192),
)

# Mask value for pixels no loss or metric counts (crowd regions under `crowd: ignore`).
IGNORE_INDEX = 255


def palette_for(num_classes: int) -> list[tuple[int, int, int]]:
    """Display colours for `num_classes` labels: the competition's, then a fixed spread."""
    colours = list(PALETTE[:num_classes])
    for i in range(len(colours), num_classes):
        colours.append(((i * 67) % 256, (i * 139) % 256, (i * 211) % 256))
    return colours
