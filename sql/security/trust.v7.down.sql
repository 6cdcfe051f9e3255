-- Undoes trust.v7 (migration 0017's downgrade): carried_or_own as trust.v1 made it.

ALTER POLICY carried_or_own ON arrays
    USING (created_by = current_user
           OR EXISTS (SELECT 1 FROM message_arrays ma WHERE ma.array_id = arrays.id));
