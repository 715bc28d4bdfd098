-- The tutorial's four public groups exist from the first start.
INSERT INTO rooms (id, kind, name, created_at) VALUES
    ('00000000-0000-7000-8000-000000000001', 'group', 'hi', 0),
    ('00000000-0000-7000-8000-000000000002', 'group', 'python', 0),
    ('00000000-0000-7000-8000-000000000003', 'group', 'events', 0),
    ('00000000-0000-7000-8000-000000000004', 'group', 'off-topic', 0);
