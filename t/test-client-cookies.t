use strict;
use warnings;
use Test::More;
use Future::AsyncAwait;
use PAGI::Test::Client;

alarm 60;

# Sets what the query asks for and echoes back the Cookie header it got.
my @cookie_headers;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    await $receive->();
    my @cookie = map { $_->[1] } grep { $_->[0] eq 'cookie' } @{ $scope->{headers} };
    push @cookie_headers, \@cookie;
    my @set = map { s/%3B/;/gr =~ s/%20/ /gr =~ s/%3D/=/gr } grep { length } split /&/, $scope->{query_string};
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ map { [ 'set-cookie', $_ ] } @set ] });
    await $send->({ type => 'http.response.body', body => join('; ', @cookie) });
};

sub set_query { join '&', map { s/;/%3B/gr =~ s/ /%20/gr =~ s/=/%3D/gr } @_ }

subtest 'set, send back, delete' => sub {
    my $client = PAGI::Test::Client->new(app => $app);
    $client->get('/login?' . set_query('session=abc123; Path=/; HttpOnly', 'theme=dark'));
    is $client->cookie('session'), 'abc123', 'the jar holds the cookie';
    is $client->get('/')->content, 'session=abc123; theme=dark', 'both cookies are sent back in one Cookie header';
    is scalar @{ $cookie_headers[-1] }, 1, 'exactly one cookie pair in the scope';

    $client->get('/?' . set_query('session=; Max-Age=0; Path=/'));
    is $client->cookie('session'), undef, 'Max-Age=0 deletes it';
    is $client->get('/')->content, 'theme=dark', 'a deleted cookie is no longer sent';

    $client->get('/?' . set_query('theme=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT'));
    is $client->get('/')->content, '', 'an Expires date in the past deletes it';
    is_deeply $cookie_headers[-1], [], 'no Cookie header when the jar is empty';

    $client->get('/?' . set_query('n="quoted"; Max-Age=3600'));
    is $client->cookie('n'), 'quoted', 'a quoted value is unquoted';
    is_deeply $client->cookies, { n => 'quoted' }, 'cookies: all of them';
};

subtest 'paths, Secure, extra and own cookies' => sub {
    my $client = PAGI::Test::Client->new(app => $app);
    $client->get('/admin/login?' . set_query('adm=1; Path=/admin', 'dflt=2', 'sec=3; Secure'));
    is $client->get('/')->content, '', 'Path=/admin, default path /admin and a Secure cookie: none sent to /';
    is $client->get('/admin/page')->content, 'adm=1; dflt=2', '/admin/page gets both path cookies, not the Secure one';
    is $client->get('/administrator')->content, '', 'a path prefix that is not a segment does not match';
    $client->cookie_jar->set(top => 'level');
    is $client->get('/', cookies => { extra => 'x' })->content, 'extra=x; top=level', 'cookies option and jar.set';
    is $client->get('/', headers => { Cookie => 'own=1' })->content, 'own=1; top=level',
        'a Cookie header of the request is joined with the jar into one pair';
    $client->cookie_jar->clear;
    is $client->get('/admin/x')->content, '', 'clear empties the jar';

    my $https = PAGI::Test::Client->new(app => $app, scheme => 'https');
    $https->get('/?' . set_query('sec=3; Secure'));
    is $https->get('/')->content, 'sec=3', 'a Secure cookie is sent over https';
};

done_testing;
