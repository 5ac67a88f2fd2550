# PAGI::Simple::Session::Store::Redis end to end: this file starts its own
# redis-server (PAGI::Test::Redis: Debian's /usr/bin/redis-server, on a free
# loopback port, no persistence, stopped at the end) and runs a PAGI::Simple
# app with the store under bin/pagi-server --workers 2 --pubsub
# redis://127.0.0.1:PORT, so the store talks to Redis through the server's
# groups hub ($hub->redis). Checks: the session survives across requests
# whichever worker answers; Redis holds it as JSON under the prefix with an
# expiry (SET ... EX); clearing deletes the key; a key that expired in Redis
# is an empty session; with Redis gone a request with a session answers 500.
use strict;
use warnings;
use v5.36;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli stderr_of http_raw wait_until);
use PAGI::Test::Redis qw(need_redis);
use File::Temp ();
use JSON::PP ();
use MIME::Base64 ();

$SIG{PIPE} = 'IGNORE';
need_redis();    # skip without redis-server, fail under CI=true

my $dir = File::Temp->newdir;
my $redis;
sub redis (@command) { $redis->command(@command) }

# --- the app ------------------------------------------------------------------

my $app_file = "$dir/app.pl";
open my $fh, '>', $app_file or die "$app_file: $!";
print {$fh} <<'APP';
use PAGI::Simple;
use PAGI::Simple::Session::Store::Redis;
my $app = PAGI::Simple->new(name => 'redis-sessions');
$app->sessions(secrets => ['redis-test-secret-0123456789'], expires => 600,
    store => PAGI::Simple::Session::Store::Redis->new(prefix => 'pagi-test:session:'));
$app->get('/count' => sub ($c) { $c->text(++$c->session->{count} . " from $$") });
$app->get('/peek' => sub ($c) { $c->text($c->session->{count} // 'none') });
$app->get('/logout' => sub ($c) { $c->session_clear; $c->text('bye') });
$app->to_app;
APP
close $fh;

sub get ($port, $path, $cookie = undef) {
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        . (defined $cookie ? "Cookie: $cookie\r\n" : '') . "\r\n", 10));
    return $r;
}
sub cookie_of ($res) {
    my ($set) = grep { /^pagi_session=/ } map { $_->[0] eq 'set-cookie' ? $_->[1] : () } @{ $res ? $res->{headers} : [] };
    return defined $set && $set =~ /^(pagi_session=[^;]+)/ ? $1 : undef;
}
# The session id inside a signed cookie (s1.PAYLOAD.SIG, PAYLOAD base64url JSON).
sub id_of ($cookie) {
    my ($payload) = ($cookie // '') =~ /^pagi_session=s1\.([\w-]+)\./ or return undef;
    my $doc = eval { JSON::PP::decode_json(MIME::Base64::decode_base64url($payload)) };
    return $doc && $doc->{id};
}

# --- the tests ------------------------------------------------------------------

$redis = eval { PAGI::Test::Redis->start };
ok($redis, 'redis-server runs on 127.0.0.1:' . ($redis ? $redis->port : '?')) or do {
    diag($@);
    done_testing;
    exit;
};

my $child = start_cli([ $app_file, '--workers', 2, '--no-access-log', '--pubsub', $redis->url ],
    timeout => 20);
ok($child->{ready}, 'pagi-server --workers 2 --pubsub redis://... runs the app') or do {
    diag(stderr_of($child));
    stop_cli($child);
    done_testing;
    exit;
};
my $port = $child->{port};
# The workers accept before their Redis bridges are connected (a request then
# would find Redis "unavailable"): wait until both say they are.
ok(wait_until(sub { (() = stderr_of($child) =~ /pubsub: connected to/g) >= 2 }, 10), 'both workers connected to Redis')
    or diag(stderr_of($child));

my $r = get($port, '/count');
like($r && "$r->{status} $r->{body}", qr/\A200 1 from \d+\z/, 'a new session') or diag(stderr_of($child));
my $cookie = cookie_of($r);
my $id = id_of($cookie);
like($id, qr/\A[0-9a-f]{32}\z/, 'the cookie carries a signed random id');
my $key = "pagi-test:session:$id";
is(redis(GET => $key), '{"count":1}', "Redis holds the session as JSON under the prefix ($key)");
my $ttl = redis(TTL => $key);
ok(defined $ttl && $ttl > 590 && $ttl <= 600, 'with the session lifetime as its expiry (SET ... EX 600)') or diag("TTL $ttl");

# Connections are new each time, so both workers answer some of these.
my %pids;
for my $n (2 .. 9) {
    $r = get($port, '/count', $cookie);
    my ($count, $pid) = ($r && $r->{body} // '') =~ /\A(\d+) from (\d+)\z/;
    $pids{$pid // 0}++;
    is($count, $n, "request $n continues the session") or diag($r && "$r->{status} $r->{body}");
    $cookie = cookie_of($r) // $cookie;
}
is(redis(GET => $key), '{"count":9}', 'Redis has the last count');
note('workers that answered: ' . join(', ', map { "$_ ($pids{$_} requests)" } sort keys %pids));

$r = get($port, '/peek', $cookie);
is($r && "$r->{status} $r->{body}", '200 9', 'reading it');

$r = get($port, '/logout', $cookie);
is($r && "$r->{status} $r->{body}", '200 bye', 'clearing the session');
is(redis(EXISTS => $key), 0, 'deletes its key');
$r = get($port, '/peek', $cookie);
is($r && $r->{body}, 'none', 'the old cookie is an empty session now');

# A key Redis expired: the session starts again.
$r = get($port, '/count');
my $cookie2 = cookie_of($r);
my $key2 = 'pagi-test:session:' . (id_of($cookie2) // '');
is(redis(PEXPIRE => $key2, 1), 1, 'a second session, expired in Redis');
ok(wait_until(sub { !redis(EXISTS => $key2) }, 5), 'gone from Redis');
$r = get($port, '/peek', $cookie2);
is($r && "$r->{status} $r->{body}", '200 none', 'its cookie finds an empty session');

# Without Redis a session cannot be loaded.
$redis->stop;
$r = get($port, '/peek', $cookie2);
is($r && $r->{status}, 500, 'Redis stopped: a request with a session answers 500');
$r = get($port, '/logout');
is($r && $r->{status}, 200, 'a request that needs no store still works');

is(stop_cli($child), 0, 'SIGTERM: pagi-server exits 0');
unlike($child->{stderr}, qr/panic|segfault/i, 'no crash logged') or diag($child->{stderr});

done_testing;
