"""The dataset sources' names, apart from the package so that the store can name them too."""

SOURCES = ("glyphs", "omniglot", "cifar-fs", "fc100", "miniimagenet", "tieredimagenet", "folder")
