// Log Analytics, Application Insights (Entra ID ingestion only), the workbook and the alert rule
// on failed or rejected remediations.
@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Log Analytics workspace name (log-<token>).')
param logAnalyticsName string

@description('Application Insights name (appi-<token>).')
param applicationInsightsName string

@description('Action group name (ag-<token>), created only with alertEmail.')
param actionGroupName string

@description('Alert rule name.')
param alertRuleName string

@description('E-mail for the alert. Empty: no action group.')
param alertEmail string = ''

@description('Principal id of the app\'s identity: Monitoring Metrics Publisher on Application Insights.')
param identityPrincipalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 90
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Only telemetry signed with an Entra ID token is ingested (the app's identity below).
    DisableLocalAuth: true
    IngestionMode: 'LogAnalytics'
  }
}

// "Monitoring Metrics Publisher" publishes all telemetry, despite its name (Microsoft Entra
// authentication for Application Insights), on this component only.
resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identityPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appInsights.id, 'pbi-credential-healer-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Power BI credential healer'
    category: 'workbook'
    sourceId: appInsights.id
    serializedData: replace(loadTextContent('../workbook.json'), '__WORKSPACE_ID__', logAnalytics.id)
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: actionGroupName
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'pbihealer'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource failedRemediations 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: alertRuleName
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Power BI credential remediation failed or rejected'
    description: 'A CredentialRemediation event with action failed (not the source\'s verdict: network, permission, ...) or rejected (the source refused the current secret version; it will not be presented again). Open the workbook for the target and the reason.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: 'customEvents | where name == "CredentialRemediation" | extend action = tostring(customDimensions.action) | where action in ("failed", "rejected") | extend secretName = tostring(customDimensions.secretName), binding = tostring(customDimensions.binding)'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'action'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'binding'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        actionGroup.id
      ]
    }
  }
}

output logAnalyticsWorkspaceId string = logAnalytics.id
output applicationInsightsName string = appInsights.name
output applicationInsightsId string = appInsights.id
output applicationInsightsConnectionString string = appInsights.properties.ConnectionString
output workbookId string = workbook.id
