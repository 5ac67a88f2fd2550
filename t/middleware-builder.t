# PAGI::Middleware (the base class) and PAGI::Middleware::Builder: order of
# composition, enable forms, enable_if, pass-through of other scope types,
# scope copying, error propagation; and a built stack on a real server.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server http_get);
use PAGI::Middleware::Builder;
use PAGI::App::File;

# A middleware that records its name on the way in and out.
{
    package Test::Tag;
    use parent 'PAGI::Middleware';
    use Future::AsyncAwait;
    sub init { $_[0]->option_error(name => 'is required') unless defined $_[0]{name} }
    async sub call {
        my ($self, $scope, $receive, $send, $app) = @_;
        my $copy = $self->scope_with($scope, 'test.trail' => [ @{ $scope->{'test.trail'} || [] }, $self->{name} ]);
        my $tag_send = async sub {
            my ($event) = @_;
            $event = { %$event, headers => [ @{ $event->{headers} || [] }, [ 'x-tag', $self->{name} ] ] }
                if $event->{type} eq 'http.response.start';
            await $send->($event);
        };
        await $app->($copy, $receive, $tag_send);
    }
}
$INC{'Test/Tag.pm'} = __FILE__;

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    die "only http\n" unless $scope->{type} eq 'http';
    die "boom\n" if $scope->{path} eq '/die';
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => join(',', @{ $scope->{'test.trail'} || [] }) });
};

subtest 'order: the first enabled is the outermost' => sub {
    my $app = builder {
        enable '+Test::Tag', name => 'outer';
        enable(Test::Tag->new(name => 'middle'));
        enable sub { my ($next) = @_; return Test::Tag->new(name => 'inner')->wrap($next) };
        $inner;
    };
    my $scope = http_scope(path => '/');
    my $r = response_of(call_app($app, $scope));
    is($r->{body}, 'outer,middle,inner', 'requests pass outer first');
    is_deeply([ map { $_->[1] } grep { $_->[0] eq 'x-tag' } @{ $r->{headers} } ], [qw(inner middle outer)],
        'responses pass inner first');
    ok(!exists $scope->{'test.trail'}, "the caller's scope is not changed");
};

subtest 'enable_if' => sub {
    my $app = builder {
        enable_if { $_[0]{path} =~ m{^/api} } '+Test::Tag', name => 'api';
        enable '+Test::Tag', name => 'all';
        $inner;
    };
    is(response_of(call_app($app, http_scope(path => '/api/x')))->{body}, 'api,all', 'condition true: enabled');
    is(response_of(call_app($app, http_scope(path => '/web')))->{body}, 'all', 'condition false: skipped, the rest still runs');
};

subtest 'other scope types pass through untouched' => sub {
    my $seen;
    my $ws_app = async sub { my ($scope) = @_; $seen = $scope; };
    my $app = builder { enable '+Test::Tag', name => 'x'; $ws_app };
    my $scope = { type => 'websocket', path => '/ws', headers => [] };
    call_app($app, $scope);
    is($seen, $scope, 'a websocket scope reaches the app as the same hash');
    $scope = { type => 'lifespan' };
    call_app($app, $scope);
    is($seen, $scope, 'so does lifespan');
};

subtest 'errors' => sub {
    my $app = builder { enable '+Test::Tag', name => 'x'; $inner };
    my $r = call_app($app, http_scope(path => '/die'));
    like($r->{error}, qr/boom/, "the app's failure reaches the caller");
    eval { builder { enable 'NoSuchMiddlewareAnywhere'; $inner } };
    like($@, qr/cannot load PAGI::Middleware::NoSuchMiddlewareAnywhere/, 'an unknown name croaks, naming the class');
    eval { builder { enable '+Test::Tag'; $inner } };
    like($@, qr/option 'name' is required/, 'a bad option croaks when the builder runs, naming the option');
    eval { builder { 42 } };
    like($@, qr/must end with the app/, 'the block must return an app');
    eval { enable '+Test::Tag', name => 'x' };
    like($@, qr/only inside a builder/, 'enable outside builder croaks');
    eval { Test::Tag->new(name => 'x')->wrap('not code') };
    like($@, qr/must be a code reference/, 'wrap checks its app');
};

subtest 'helpers' => sub {
    is(PAGI::Middleware->html_escape(q{<a href="x">'&'</a>}), '&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;', 'html_escape');
    is_deeply(PAGI::Middleware->add_vary([ [ 'Vary', 'Accept' ] ], 'Origin'), [ [ 'Vary', 'Accept, Origin' ] ], 'add_vary merges');
    is_deeply(PAGI::Middleware->add_vary([ [ 'vary', 'origin' ] ], 'Origin'), [ [ 'vary', 'origin' ] ], 'and does not repeat');
    is(PAGI::Middleware->header([ [ 'a', 1 ], [ 'b', 2 ], [ 'b', 3 ] ], 'b'), 2, 'header: the first');
};

subtest 'mount' => sub {
    my $echo = sub {
        my ($name) = @_;
        return async sub {
            my ($scope, $receive, $send) = @_;
            die "no lifespan\n" unless $scope->{type} eq 'http';
            await $send->({ type => 'http.response.start', status => 200, headers => [] });
            await $send->({ type => 'http.response.body', body => "$name root_path=$scope->{root_path} path=$scope->{path}" });
        };
    };
    my $app = builder {
        enable '+Test::Tag', name => 'outer';
        mount '/api' => $echo->('api');
        mount '/api/v2/' => $echo->('v2');
        $echo->('default');
    };
    my $body = sub { response_of(call_app($app, http_scope(@_)))->{body} };
    is($body->(path => '/api/users'), 'api root_path=/api path=/api/users', 'a prefix sets root_path; path stays whole');
    is($body->(path => '/api'), 'api root_path=/api path=/api', 'the prefix itself');
    is($body->(path => '/api/v2/x'), 'v2 root_path=/api/v2 path=/api/v2/x', 'the longest prefix wins');
    is($body->(path => '/apiary'), 'default root_path= path=/apiary', 'a longer name is not under the prefix');
    is($body->(path => '/x', root_path => '/site'), 'default root_path=/site path=/x', 'no match: the block app');
    is($body->(path => '/site/api/a', root_path => '/site'), 'api root_path=/site/api path=/site/api/a', 'nested under a root_path');
    my $r = response_of(call_app($app, http_scope(path => '/api')));
    is($r->{header}{'x-tag'}, 'outer', 'enabled middleware wraps the dispatcher');
    my $only = builder { mount '/a' => $echo->('a') };
    is(response_of(call_app($only, http_scope(path => '/b')))->{status}, 404, 'no match and no block app: 404');
    eval { builder { mount 'a' => $inner } };
    like($@, qr/prefix must start with '\/'/, 'a bad prefix croaks');
};

subtest 'mount: lifespan reaches every app' => sub {
    my @log;
    my $lifespan_app = sub {
        my ($name, %o) = @_;
        return async sub {
            my ($scope, $receive, $send) = @_;
            die "no lifespan\n" unless $scope->{type} eq 'lifespan';
            my $e = await $receive->();
            $scope->{state}{$name} = 1;
            push @log, "$name $e->{type}";
            if ($o{fail}) { await $send->({ type => 'lifespan.startup.failed', message => "$name broke" }); return }
            await $send->({ type => 'lifespan.startup.complete' });
            $e = await $receive->();
            push @log, "$name $e->{type}";
            await $send->({ type => 'lifespan.shutdown.complete' });
        };
    };
    my $app = builder {
        mount '/a' => $lifespan_app->('a');
        mount '/b' => $lifespan_app->('b');
        mount '/c' => $inner;    # declines lifespan
    };
    my @outer = ({ type => 'lifespan.startup' }, { type => 'lifespan.shutdown' });
    my @sent;
    my $state = {};
    my $f = $app->({ type => 'lifespan', state => $state }, sub { Future->done(shift @outer) }, sub { push @sent, $_[0]{type}; Future->done });
    $f->get;
    is_deeply(\@sent, [ 'lifespan.startup.complete', 'lifespan.shutdown.complete' ], 'one startup and one shutdown answer');
    is_deeply([ sort @log ], [ 'a lifespan.shutdown', 'a lifespan.startup', 'b lifespan.shutdown', 'b lifespan.startup' ],
        'each app got startup and shutdown');
    is_deeply($state, { a => 1, b => 1 }, 'sharing one state hash');

    my $failing = builder { mount '/a' => $lifespan_app->('a'); mount '/b' => $lifespan_app->('b', fail => 1) };
    @outer = ({ type => 'lifespan.startup' });
    my @failed;
    $failing->({ type => 'lifespan', state => {} }, sub { Future->done(shift @outer) }, sub { push @failed, $_[0]; Future->done })->get;
    is($failed[0]{type}, 'lifespan.startup.failed', 'one failure fails startup');
    is($failed[0]{message}, 'b broke', 'with its message');
};

subtest 'a built stack on a real server' => sub {
    my $app = builder {
        enable 'SecurityHeaders';
        enable 'CORS', origins => ['http://allowed.example'];
        enable '+Test::Tag', name => 'tag';
        mount '/files' => PAGI::App::File->new(root => "$FindBin::Bin/apps/public/static")->to_app;
        $inner;
    };
    my ($server, $port) = start_server(app => $app);
    my $file = http_get($port, '/files/hello.txt')->get;
    is($file->{status}, 200, 'a mounted PAGI::App::File: 200');
    like($file->{body}, qr/\AA plain text file/, 'with the file');
    my $r = http_get($port, '/', Origin => 'http://allowed.example')->get;
    is($r->{status}, 200, 'status 200');
    is($r->{body}, 'tag', 'the app ran inside the stack');
    is($r->{header}{'access-control-allow-origin'}, 'http://allowed.example', 'CORS header');
    is($r->{header}{'x-content-type-options'}, 'nosniff', 'security header');
    is($r->{header}{'x-tag'}, 'tag', 'the inner middleware header');
    stop_server($server);
};

done_testing;
