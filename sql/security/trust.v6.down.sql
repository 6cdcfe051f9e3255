-- Undoes trust.v6 (migration 0015's downgrade): the policies as trust.v2 and trust.v4
-- left them.

ALTER POLICY clientapp_messages ON messages
    USING (run_id = (SELECT flpg_my_run_id())
           AND (dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])
                OR src_node_id = ANY((SELECT flpg_my_node_ids())::bigint[])));
ALTER POLICY clientapp_claims ON messages
    USING (run_id = (SELECT flpg_my_run_id())
           AND dst_node_id = ANY((SELECT flpg_my_node_ids())::bigint[]));
ALTER POLICY serverapp_run ON messages USING (run_id = (SELECT flpg_my_run_id()));
ALTER POLICY serverapp_run ON arrays USING (run_id = (SELECT flpg_my_run_id()));

ALTER POLICY readable_array ON array_chunks
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks.array_id)
           OR flpg_array_writer(array_id) = current_user);
ALTER POLICY readable_array ON array_chunks_transient
    USING (EXISTS (SELECT 1 FROM arrays a WHERE a.id = array_chunks_transient.array_id)
           OR flpg_array_writer(array_id) = current_user);
