"""Review stage: operators close the loop on what the question log shows.

For a logged question or a whole knowledge-gap cluster an operator attaches it to an FAQ as a new
variant, marks it out of scope, or drafts a new FAQ from it. Decisions are stored with who and when,
listed, undoable, exported in the ingest formats, and published as a new build that embeds only the
new rows; the next ``ingest``/``rebuild-index`` keeps them. ``gaps`` groups handed-off and unhelpful
questions into clusters by meaning.
"""
