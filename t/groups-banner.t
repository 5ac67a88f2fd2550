# The startup banner about groups (issue 13): with --workers above 1 and no
# --pubsub it warns that rooms and channels are per worker; a single process
# gets no such warning; PAGI_PUBSUB in the environment stands in for
# --pubsub (a password then stays off the command line) and is never shown.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT start_cli stop_cli stderr_of wait_until);
use PAGI::Test::Redis;

my $app = ROOT() . '/examples/01-hello-http/app.pl';
my $warning = qr/warn: groups \(rooms and channels\) are per worker: .*--pubsub/;

my $workers = start_cli([ $app, '--no-access-log', '--workers', 2 ], timeout => 20);
ok($workers->{ready}, '--workers 2 starts') or diag(stderr_of($workers));
ok(wait_until(sub { stderr_of($workers) =~ /2 workers ready/ }, 20), 'both workers are ready');
like(stderr_of($workers), $warning, '--workers 2 without --pubsub: the banner warns that groups are per worker');
is(stop_cli($workers, 20), 0, 'exit 0');

my $single = start_cli([ $app, '--no-access-log' ], timeout => 20);
ok($single->{ready}, 'a single process starts') or diag(stderr_of($single));
ok(wait_until(sub { stderr_of($single) =~ /listening on/ }, 10), 'its banner is out');
unlike(stderr_of($single), qr/per worker/, 'one process: no warning');
is(stop_cli($single, 20), 0, 'exit 0');

PAGI::Test::Redis::need_redis();
my $redis = PAGI::Test::Redis->start(password => 'env-secret-42');
my $url = $redis->url;
like($url, qr/:env-secret-42@/, 'the URL carries the password');
my $from_env = start_cli([ $app, '--no-access-log', '--workers', 2 ], timeout => 20, env => { PAGI_PUBSUB => $url });
ok($from_env->{ready}, 'PAGI_PUBSUB set, no --pubsub: starts') or diag(stderr_of($from_env));
ok(wait_until(sub { my $e = stderr_of($from_env); (() = $e =~ /pubsub: connected to/g) >= 2 && $e =~ /2 workers ready/ }, 20),
    'both workers connect to the Redis PAGI_PUBSUB names') or diag(stderr_of($from_env));
my $log = stderr_of($from_env);
like($log, qr/groups \(rooms and channels\) cross processes through redis:\/\/\*\*\*\@127\.0\.0\.1:\d+/, 'the banner names it, password hidden') or diag($log);
unlike($log, qr/per worker/, 'and does not warn about per-worker groups');
unlike($log, qr/env-secret-42/, 'the password appears nowhere in the output');
is(stop_cli($from_env, 20), 0, 'exit 0');
$redis->stop;

done_testing;
