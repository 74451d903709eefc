"""The pipeline's report: tables from the metrics files, the stages' figures, README's results block.

``tables`` turns the metrics documents (plain dicts) into tables and the flat summary rows that
``dvc metrics show`` lists; ``plots`` writes the long-format CSVs of the top-level DVC plots;
``document`` assembles the sections; ``render`` writes them as Markdown and as one self-contained
HTML page (figures as data URIs); ``readme`` rewrites the block between README's markers;
``inputs`` reads the files. Nothing here reads params: the stage passes the values.
"""
