-- The CloudEvents `sequence` of events about a user or a binding: the last value given per
-- subject. Taking the next one locks the subject's row until commit, so a subject's sequence
-- follows the order in which its events were committed.
CREATE TABLE event_sequences (
    subject uuid   PRIMARY KEY,
    last    bigint NOT NULL CHECK (last > 0)
);
