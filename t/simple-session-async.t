# PAGI::Simple sessions on a store whose methods return Futures, over real
# sockets (PAGI::Server in this process, raw HTTP requests): the async
# PAGI::Simple::Session::Store::Memory (Futures done on a later loop turn,
# data kept as JSON) loads the session before the handler when the request
# has a cookie, the response start waits for set/delete, a failed save
# answers 500, before hooks and streamed responses see the same, and a
# synchronous store is still called lazily, as before.
use strict;
use warnings;
use v5.36;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Simple qw(serve request);
use PAGI::Test::Server qw(stop_server);
use Future;
use Future::AsyncAwait;
use IO::Async::Loop;
use PAGI::Simple;
use PAGI::Simple::Session;

local $SIG{ALRM} = sub { die "simple-session-async.t: timed out\n" };
alarm 120;

my $SECRET = 'async-secret-0123456789';
my @log;    # what the store and the server's send saw, in order

# The async memory store, logging each call and when its Future completes.
package LoggingStore {
    use parent -norequire, 'PAGI::Simple::Session::Store::Memory';
    use v5.36;
    sub for_scope ($self, $scope) { $self->{scopes}++ if ref $scope eq 'HASH' }
    for my $m (qw(get set delete)) {
        no strict 'refs';
        my $super = PAGI::Simple::Session::Store::Memory->can($m);
        *{$m} = sub ($self, @args) {
            push @log, "$m called";
            my $f = $super->($self, @args);
            return $f->on_done(sub { push @log, "$m done" });
        };
    }
}

# A store whose writes fail (after a loop turn), as a store that lost its server would.
package FailingStore {
    use parent -norequire, 'PAGI::Simple::Session::Store::Memory';
    use v5.36;
    sub set ($self, @) {
        my $loop = IO::Async::Loop->new;
        my $f = $loop->new_future;
        $loop->later(sub { $f->fail("store is down\n") });
        return $f;
    }
}

# The synchronous memory store, noting its calls.
our @calls;
package SyncSpy {
    use parent -norequire, 'PAGI::Simple::Session::Store::Memory';
    use v5.36;
    sub get ($self, @a) { push @main::calls, 'get'; $self->SUPER::get(@a) }
    sub set ($self, @a) { push @main::calls, 'set'; $self->SUPER::set(@a) }
}

package main;

sub make_app ($store) {
    my $app = PAGI::Simple->new(name => 'async-sessions');
    $app->sessions(secrets => [$SECRET], store => $store);
    # Logs the response start as the server is asked to send it.
    $app->use(sub ($inner) {
        sub ($scope, $receive, $send) {
            $inner->($scope, $receive, sub ($ev) {
                push @log, "response start $ev->{status}" if $ev->{type} eq 'http.response.start';
                $send->($ev);
            });
        };
    });
    $app->get('/count' => sub ($c) { push @log, 'handler'; $c->text(++$c->session->{count}) });
    $app->get('/peek' => sub ($c) { push @log, 'handler'; $c->text($c->session->{count} // 'none') });
    $app->get('/nothing' => sub ($c) { push @log, 'handler'; $c->text('no session used') });
    $app->get('/logout' => sub ($c) { $c->session_clear; $c->text('bye') });
    $app->get('/stream' => sub ($c) {
        $c->session->{streamed} = 1;
        $c->stream(async sub ($w) { await $w->write('streamed') }, content_type => 'text/plain');
    });
    $app->group('/hooked' => sub ($app) {
        $app->get('/count' => [ sub ($c, $next) { push @log, 'middleware sees ' . ($c->session->{count} // 'none'); $next->() } ]
            => sub ($c) { $c->text(++$c->session->{count}) });
    });
    return $app;
}

sub get_with ($port, $path, $cookie = undef) {
    request($port, GET => $path, headers => [ defined $cookie ? [ Cookie => $cookie ] : () ]);
}
sub cookie_of ($res) {
    my ($set) = @{ $res->{all_headers}->('set-cookie') };
    return ($set // '') =~ /^(pagi_session=[^;]*)/ ? $1 : undef;
}

subtest 'an async store: loaded before the handler, saved before the response starts' => sub {
    my $store = LoggingStore->new(async => 1, delay => 0.05);
    ok($store->is_async, 'the memory store in async mode says it is async');
    my ($server, $port) = serve(make_app($store));

    @log = ();
    my $r = get_with($port, '/count');
    is("$r->{status} $r->{body}", '200 1', 'a new session');
    my $cookie = cookie_of($r);
    like($cookie, qr/^pagi_session=s1\.[\w-]+\.[\w-]+$/, 'a signed id cookie');
    is_deeply(\@log, [ 'handler', 'set called', 'set done', 'response start 200' ],
        'no cookie: no get; the response starts once the set is done');

    @log = ();
    $r = get_with($port, '/count', $cookie);
    is("$r->{status} $r->{body}", '200 2', 'the session comes back from the store');
    is_deeply(\@log, [ 'get called', 'get done', 'handler', 'set called', 'set done', 'response start 200' ],
        'with a cookie: the get is done before the handler runs');

    @log = ();
    $r = get_with($port, '/peek', $cookie);
    is("$r->{status} $r->{body}", '200 2', 'reading it');
    is_deeply(\@log, [ 'get called', 'get done', 'handler', 'response start 200' ], 'an unchanged session is not written');
    is_deeply($r->{all_headers}->('set-cookie'), [], 'and sets no cookie');

    @log = ();
    $r = get_with($port, '/nothing');
    is_deeply(\@log, [ 'handler', 'response start 200' ], 'no cookie and no session use: the store is not touched');

    @log = ();
    $r = get_with($port, '/hooked/count', $cookie);
    is("$r->{status} $r->{body}", '200 3', 'a route with middleware');
    is($log[2], 'middleware sees 2', 'the middleware sees the loaded session');

    @log = ();
    $r = get_with($port, '/stream', $cookie);
    is("$r->{status} $r->{body}", '200 streamed', 'a streamed response');
    is_deeply([ grep { /set|response/ } @log ], [ 'set called', 'set done', 'response start 200' ],
        'its start waits for the save too');
    my $new_cookie = cookie_of($r);
    $r = get_with($port, '/peek', $new_cookie);
    is($r->{body}, 3, 'the streamed request kept the session');

    @log = ();
    $r = get_with($port, '/logout', $new_cookie);
    is("$r->{status} $r->{body}", '200 bye', 'clearing the session');
    is_deeply([ grep { /delete|response/ } @log ], [ 'delete called', 'delete done', 'response start 200' ],
        'the response waits for the delete');
    like($r->{all_headers}->('set-cookie')->[0], qr/^pagi_session=; .*max-age=0/i, 'and expires the cookie');
    $r = get_with($port, '/peek', $new_cookie);
    is($r->{body}, 'none', 'the old cookie finds nothing in the store');

    $r = get_with($port, '/peek', 'pagi_session=s1.eyJpZCI6IngiLCJleHAiOjk5OTk5OTk5OTl9.AAAA');
    is("$r->{status} $r->{body}", '200 none', 'a forged cookie: an empty session');
    ok($store->{scopes} > 0, 'the store was given the request scope (for_scope)');
    stop_server($server);
};

subtest 'the async store keeps copies' => sub {
    my $store = PAGI::Simple::Session::Store::Memory->new(async => 1);
    my $data = { a => [1] };
    $store->set('x', $data, time + 60)->get;
    $data->{a}[0] = 2;
    my $got = $store->get('x')->get;
    is_deeply($got, { a => [1] }, 'a later change to the hash set does not reach the store');
    $store->set('old', { a => 1 }, time - 1)->get;
    is($store->get('old')->get, undef, 'expired entries are gone');
    is($store->delete('x')->get, 1, 'delete');
    is($store->get('x')->get, undef, 'deleted');
};

subtest 'a failed save answers 500' => sub {
    my ($server, $port) = serve(make_app(FailingStore->new(async => 1)));
    my @warnings;
    local $SIG{__WARN__} = sub { push @warnings, $_[0] };
    my $r = get_with($port, '/count');
    is("$r->{status} $r->{body}", '500 Internal Server Error', 'the store failed: 500 instead of the response');
    is_deeply($r->{all_headers}->('set-cookie'), [], 'without the session cookie');
    like(join('', @warnings), qr/session store failed to save the session: store is down/, 'the failure is logged');
    stop_server($server);
};

subtest 'a synchronous store is called as before' => sub {
    my $store = SyncSpy->new;
    ok(!$store->is_async, 'the memory store is synchronous by default');
    my ($server, $port) = serve(make_app($store));
    @log = ();
    my $r = get_with($port, '/count');
    my $cookie = cookie_of($r);
    is("$r->{status} $r->{body}", '200 1', 'a new session');
    is_deeply(\@calls, ['set'], 'set when the response starts');
    @calls = ();
    $r = get_with($port, '/nothing', $cookie);
    is_deeply(\@calls, [], 'a handler that does not use the session: no get, even with a cookie');
    $r = get_with($port, '/count', $cookie);
    is($r->{body}, 2, 'the session comes back');
    is_deeply(\@calls, [qw(get set)], 'get when the handler asks, set at the start');
    stop_server($server);
};

subtest 'a store returning Futures without saying so' => sub {
    package UndeclaredStore { use v5.36; sub new ($c) { bless {}, $c } sub get ($s, $id) { IO::Async::Loop->new->new_future } sub set { 1 } sub delete { 1 } }
    my $app = PAGI::Simple->new(name => 'undeclared');
    my $sessions = PAGI::Simple::Session->new(secrets => [$SECRET], store => UndeclaredStore->new);
    $app->{sessions} = $sessions;
    $app->get('/peek' => sub ($c) { $c->text($c->session->{count} // 'none') });
    my ($server, $port) = serve($app);
    my $value = $sessions->encode_value({ id => 'abc', exp => time + 60 });
    my @warnings;
    local $SIG{__WARN__} = sub { push @warnings, $_[0] };
    my $r = get_with($port, '/peek', "pagi_session=$value");
    is($r->{status}, 500, 'a pending Future from a store without is_async: 500');
    like(join('', @warnings), qr/must have an is_async method returning true/, 'saying what the store lacks');
    stop_server($server);
};

# The Redis store's commands, against a stand-in for the server's hub (a
# hash for Redis, replies on a later loop turn); t/simple-session-redis.t
# runs it against a real redis-server through pagi-server.
package FakeHub {
    use v5.36;
    sub new ($class, %o) { bless { backend => 'redis', db => {}, commands => [], %o }, $class }
    sub backend ($self) { $self->{backend} }
    sub redis ($self, @cmd) {
        push @{ $self->{commands} }, [@cmd];
        my $loop = IO::Async::Loop->new;
        my $f = $loop->new_future;
        my %do = (
            GET => sub ($k) { $self->{db}{$k} },
            SET => sub ($k, $v, @) { $self->{db}{$k} = $v; 'OK' },
            DEL => sub ($k) { delete $self->{db}{$k} ? 1 : 0 },
        );
        my $reply = $do{ $cmd[0] }->(@cmd[ 1 .. $#cmd ]);
        $loop->later(sub { $f->done($reply) });
        return $f;
    }
}

subtest 'PAGI::Simple::Session::Store::Redis commands' => sub {
    require PAGI::Simple::Session::Store::Redis;
    my $store = PAGI::Simple::Session::Store::Redis->new(prefix => 'app:s:');
    ok($store->is_async, 'async');
    is($store->key('abc'), 'app:s:abc', 'keys are prefix . id');
    my $err = $store->get('abc')->failure;
    like($err, qr/no Redis connection: the server offers no groups extension .*--pubsub/, 'without a hub: fails saying why');
    my $hub = FakeHub->new;
    $store->for_scope({ extensions => { groups => { backend => 'redis', hub => $hub } } });
    is($store->set('abc', { n => 1, name => "\x{e9}" }, time + 100)->get, 1, 'set');
    my ($cmd) = @{ $hub->{commands} };
    is_deeply([ @$cmd[ 0 .. 3 ] ], [ 'SET', 'app:s:abc', qq({"n":1,"name":"\xc3\xa9"}), 'EX' ], 'SET key JSON (UTF-8) EX ...');
    ok($cmd->[4] >= 99 && $cmd->[4] <= 100, 'the seconds left until the expiry');
    is_deeply($store->get('abc')->get, { n => 1, name => "\x{e9}" }, 'get decodes it');
    is($store->get('nope')->get, undef, 'a missing key: undef');
    $hub->{db}{'app:s:bad'} = 'not json';
    my @warnings;
    { local $SIG{__WARN__} = sub { push @warnings, @_ }; is($store->get('bad')->get, undef, 'a value that is not a JSON object: undef') }
    like("@warnings", qr/app:s:bad does not hold a JSON object/, 'with a warning');
    is($store->delete('abc')->get, 1, 'delete');
    is_deeply($hub->{commands}[-1], [ 'DEL', 'app:s:abc' ], 'DEL key');
    $store->set('past', {}, time - 5)->get;
    is($hub->{commands}[-1][4], 1, 'an expiry already past: EX 1');

    my $local = PAGI::Simple::Session::Store::Redis->new(hub => FakeHub->new(backend => 'local'));
    like($local->get('x')->failure, qr/backend is 'local', not redis/, 'the local backend: fails saying why');
    $local->for_scope({ extensions => { groups => { hub => $hub } } });
    like($local->get('x')->failure, qr/'local'/, 'a hub given to new is kept');
    eval { PAGI::Simple::Session::Store::Redis->new(prefx => 1) };
    like($@, qr/unknown option 'prefx'/, 'unknown options are refused');

    # Through PAGI::Simple over a socket.
    my $app = make_app(PAGI::Simple::Session::Store::Redis->new(hub => $hub, prefix => 'app:s:'));
    my ($server, $port) = serve($app);
    my $r = get_with($port, '/count');
    my $cookie = cookie_of($r);
    $r = get_with($port, '/count', $cookie);
    is("$r->{status} $r->{body}", '200 2', 'sessions work through the stand-in hub');
    stop_server($server);
};

done_testing;
