-- What happens when an approved window occurrence passes before the
-- operation could apply: 'ask' (NULL, the default) opens a new approval
-- request; 'next' moves the approval to the next occurrence by itself.
ALTER TABLE fleet_policies ADD COLUMN on_missed_occurrence TEXT;
