"""Facts about HAM10000 that do not change between runs."""

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
MINORITY_CLASSES: tuple[str, ...] = ("akiec", "bcc", "df", "mel", "vasc")
REQUIRED_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx")
EDA_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
