"""Facts of the data layout that do not change between runs (the task's labels come from params
``data.classes``)."""

REQUIRED_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx")
EDA_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
