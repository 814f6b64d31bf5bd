/* The SQL migrations compiled into the binary. build/gen/migrations.c, which tools/embed_sql.sh
 * generates from migrations/NNN_name.sql, defines the array sorted by version (no duplicates). */
#ifndef PGND_STORE_MIGRATIONS_INTERNAL_H
#define PGND_STORE_MIGRATIONS_INTERNAL_H

typedef struct store_migration {
    int version;      /* NNN */
    const char *name; /* the file name between "NNN_" and ".sql" */
    const char *sql;  /* the file's text */
} store_migration;

extern const store_migration store_migrations[];
extern const int store_migrations_count;

#endif
