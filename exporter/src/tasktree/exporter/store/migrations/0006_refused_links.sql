-- tasktree schema, version 6: refused parent links and tree heights (issue 7, abuse).
--
-- A task whose declared parent cannot be its parent is kept at the top of its run (parent NULL)
-- and the link it declared is kept here, with the reason, so that the page shows it
-- (design.md §3 rule 7): 1 = the declared parents loop (A -> B -> A), 2 = the link would make
-- the tree deeper than TASKTREE_MAX_DEPTH levels.  height is the number of levels below a task
-- (0: no children), which lets the folder refuse a too-deep link by reading only the parent's
-- chain.  Tasks stored before this version start at height 0: the limit holds from the links
-- folded from now on.  (Adding columns with constant defaults rewrites nothing.)
ALTER TABLE tasks
    ADD COLUMN height integer NOT NULL DEFAULT 0,
    ADD COLUMN refused_parent_span_id bytea,
    ADD COLUMN refused_reason smallint;
