-- Trust, version 7 (migration 0017): the arrays policy of nodes and ClientApps looks
-- each array's carrying message up, it never hashes them all.
--
-- `carried_or_own` lets a node or ClientApp read an array it wrote or one a message
-- it may see carries: an EXISTS on message_arrays (whose own policies narrow it to
-- the caller's node ids, and run). Once the tables have statistics, the planner
-- turned that EXISTS into a hash of every message_arrays row the caller may see,
-- built at each statement: for a ClientApp every array link of its run and node,
-- for a node worker those of every run it served. A payload listing and every chunk
-- read (whose policy asks whether the array is readable) paid for the whole history.
-- `OFFSET 0` keeps the EXISTS a lookup through ix_message_arrays_audience for the
-- arrays the statement's own conditions found (as trust.v6 did for the chunk
-- tables). The rows are the same.
-- Never edit a released version: a change is a new file and a migration naming it.

ALTER POLICY carried_or_own ON arrays
    USING (created_by = current_user
           OR EXISTS (SELECT 1 FROM message_arrays ma WHERE ma.array_id = arrays.id OFFSET 0));
